"""The input model and data configs of an Olive config."""

from __future__ import annotations

from .tables import INPUT_MODEL_DATA, MODEL_TYPES


class ModelsAndData:
    """Mixed into the translator: input_model, hf_config, data_configs."""

    def input_model(self, model) -> None:
        where = "input_model"
        if not isinstance(model, dict):
            self.bad(where, "missing: give the model to optimize")
            return
        model = self._flat(model)
        native_keys = set(self.schema["properties"]["input_model"]["properties"])
        kind = MODEL_TYPES.get(str(model.pop("type", "")).lower())
        hf = model.pop("hf_config", None) or {}
        spec: dict = {}
        self.model_names = {name for name in (model.get("model_path"), hf.get("model_name")) if isinstance(name, str)}
        self.task = model.get("task", hf.get("task"))
        if hf:
            if "model_name" in hf and "model_path" not in model:
                model["model_path"] = hf.pop("model_name")
            else:
                hf.pop("model_name", None)  # the hub name of a local copy: the local folder is what loads
            if "task" in hf:
                model["task"] = hf.pop("task")
            if "dataset" in hf:
                self._hf_dataset(hf.pop("dataset"), model.get("task"))
                self.input_data = INPUT_MODEL_DATA  # what a metric without a data_config is scored on
            for key in ("from_pretrained_args", "model_loading_args"):
                spec.update(self._load_kwargs(hf.pop(key, None), f"{where}.hf_config.{key}"))
            for key, value in hf.items():
                if key in native_keys:
                    spec[key] = value
                else:
                    self.bad(f"{where}.hf_config.{key}", "not supported; hf_config here takes model_name, task and dataset")
            kind = "HfModel" if kind in ("PyTorchModel", "HfModel") and not model.get("model_loader") else kind
        if kind is None:
            self.bad(f"{where}.type", "olive-systems takes HfModel, PyTorchModel (where supported) and ONNXModel; "
                                      "convert other formats to ONNX first")
            return
        if kind == "PyTorchModel" and "PyTorchModel" not in self.schema["properties"]["input_model"]["properties"]["type"]["enum"]:
            self.bad(f"{where}.type", "a PyTorchModel without hf_config (a model_loader) is not supported here: "
                                      "save the model with save_pretrained and use HfModel, or export it to ONNX")
            return
        spec["type"] = kind
        spec.update(self._load_kwargs(model.pop("load_kwargs", None), f"{where}.load_kwargs"))
        path = model.pop("model_path", None)
        if path is None and not (kind == "PyTorchModel" and model.get("model_loader")):
            self.bad(f"{where}.model_path", "missing: give a hub id or a local folder")
        elif path is not None:
            spec["model_path"] = self._resource(path)
        for key in ("model_attributes", "model_file_format"):
            value = model.pop(key, None)
            if value not in (None, {}, "PyTorch.Directory", "PyTorch.Entire", "Onnx.File", "Onnx.Folder"):
                self.bad(f"{where}.{key}", "not supported: olive-systems reads the model's own config.json; remove it")
        for key, value in model.items():
            if key in native_keys:
                spec[key] = value
            else:
                self.bad(f"{where}.{key}", f"not supported; an input model here takes {sorted(native_keys - {'type'})}")
        self.out["input_model"] = spec

    def _load_kwargs(self, kwargs, where: str) -> dict:
        """from_pretrained arguments: the hub revision is kept; the rest must be what loading does here."""
        accepted = {"attn_implementation": ["eager", "sdpa"], "trust_remote_code": [False, None], "torch_dtype": [None]}
        kept = {}
        for key, value in (kwargs or {}).items():
            if key == "revision" and value:
                kept["revision"] = value
            elif value not in accepted.get(key, []):
                self.bad(f"{where}.{key}", "not supported: olive-systems loads the model as saved (OnnxConversion's "
                                           "torch_dtype sets the export precision); remove it")
        return kept

    def _resource(self, value):
        if isinstance(value, dict) and "config" in value:  # {type: azureml_model, config: {...}}
            return {"type": value["type"], **value["config"]}
        return value

    # ---- data ----

    @staticmethod
    def _data_list(data_configs) -> list:
        if isinstance(data_configs, dict):  # Olive 0.3: {name: config}
            return [{"name": name, **config} for name, config in data_configs.items()]
        return data_configs or []

    def _hf_dataset(self, dataset: dict, task) -> None:
        """hf_config.dataset (oldest generation) -> a data config named __input_model_data_config__."""
        self.data_config({"name": INPUT_MODEL_DATA, "type": "HuggingfaceContainer", "params_config": dataset},
                         "input_model.hf_config.dataset", task)

    def data_config(self, dc: dict, where: str, task=None) -> str | None:
        dc = dict(dc)
        name = dc.pop("name", None) or f"data_{len(self.data_configs)}"
        kind = dc.pop("type", "HuggingfaceContainer")
        native_types = self.data_schema["properties"]["type"]["enum"]
        if kind not in native_types:
            self.bad(f"{where}.type", f"{kind} is not supported; data containers here: {native_types}")
            return name
        params = dc.pop("params_config", None) or {}
        components = dc.pop("components", None) or {}
        # each component may hold its options under `params` (Olive's generic form)
        load, pre, loader = (self._params(dc.pop(key, None)) for key in
                             ("load_dataset_config", "pre_process_data_config", "dataloader_config"))
        post = self._params(dc.pop("post_process_data_config", None)) or None
        kwargs = params.pop("component_kwargs", None) or {}
        for component, target in (("load_dataset", load), ("pre_process_data", pre), ("dataloader", loader)):
            target.update(kwargs.get(component) or {})
            comp = components.get(component) or {}
            target.update(comp.get("params") or {})
            if comp.get("type"):
                target["type"] = comp["type"]
        if components.get("post_process_data") or kwargs.get("post_process_data"):
            part = components.get("post_process_data") or {}
            post = {**(post or {}), **({"type": part["type"]} if part.get("type") else {}),
                    **(part.get("params") or {}), **(kwargs.get("post_process_data") or {})}
        for part in set(components) | set(kwargs):
            if part not in ("load_dataset", "pre_process_data", "post_process_data", "dataloader"):
                self.bad(f"{where}.{part}", "not a data component; they are load_dataset, pre_process_data, "
                                            "post_process_data, dataloader")
        if kind != "HuggingfaceContainer":  # DummyDataContainer: shapes, names, types are its load config
            load.update(params)
            params = {}
        for key in ("data_name", "subset", "split", "data_files", "data_dir"):
            if key in params:
                load[key] = params.pop(key)
        for key in ("input_cols", "label_cols", "label_col", "max_samples", "max_length", "padding", "model_name",
                    "task", "trust_remote_code"):
            if key in params:
                pre[key] = params.pop(key)
        if "batch_size" in params:
            loader["batch_size"] = params.pop("batch_size")
        for key in params:
            self.bad(f"{where}.params_config.{key}", "not supported; params_config takes data_name, subset, split, "
                                                     "data_files, input_cols, label_cols, batch_size, max_samples")
        native: dict = {"name": name}
        if kind != "HuggingfaceContainer":
            native["type"] = kind
        for key in ("user_script", "tokenizer"):
            if key in dc:
                native[key] = dc.pop(key)
        if dc.get("script_dir") is None:
            dc.pop("script_dir", None)
        for key in dc:
            self.bad(f"{where}.{key}", "not supported in a data config here")
        self._user_functions(where, load, pre, post, loader)
        if kind == "HuggingfaceContainer":
            native["load_dataset_config"] = self._load_config(load, f"{where}.load_dataset_config")
            native["pre_process_data_config"] = self._pre_config(pre, f"{where}.pre_process_data_config")
        else:  # DummyDataContainer and others H2 adds: their keys pass as written
            if load:
                native["load_dataset_config"] = load
            if pre:
                native["pre_process_data_config"] = pre
        if post:
            native["post_process_data_config"] = self._post_config(post, f"{where}.post_process_data_config")
        if loader:
            if loader.get("type") in (None, "default_dataloader"):
                loader.pop("type", None)
            native["dataloader_config"] = loader
        self.data_configs.append(native)
        return name

    @staticmethod
    def _params(component) -> dict:
        component = dict(component or {})
        return {**(component.pop("params", None) or {}), **component}

    def _user_functions(self, where: str, load: dict, pre: dict, post, loader: dict) -> None:
        """Olive's data functions take and return other things than olive-systems' (README: Data
        functions): a config naming one is refused here rather than failing mid-run."""
        builtin = {"load_dataset_config": (None, "huggingface_dataset"),
                   "pre_process_data_config": (None, "huggingface_pre_process", "text_classification_pre_process",
                                               "tokenize"),
                   "post_process_data_config": (None, "text_classification_post_process", "huggingface_post_process",
                                                "argmax", "identity"),
                   "dataloader_config": (None, "default_dataloader")}
        for key, component in (("load_dataset_config", load), ("pre_process_data_config", pre),
                               ("post_process_data_config", post or {}), ("dataloader_config", loader)):
            kind = component.get("type")
            if kind not in builtin[key]:
                self.bad(f"{where}.{key}.type", f"{kind}: an Olive data function; olive-systems calls its own data "
                                                "functions with other arguments (README: Data functions): rewrite it "
                                                "to that contract and give it in a native recipe (convert-config)")
                component.pop("type")

    def _load_config(self, load: dict, where: str) -> dict:
        if load.get("type") in (None, "huggingface_dataset"):
            load.pop("type", None)
        if load.get("trust_remote_code") in (False, None):
            load.pop("trust_remote_code", None)
        if "data_dir" in load and "data_files" not in load:
            self.bad(f"{where}.data_dir", "not supported: give the files as data_files (and data_name csv/json/parquet)")
            load.pop("data_dir")
        from ..data import HF_LOAD_SCHEMA

        known = set(HF_LOAD_SCHEMA["properties"])
        for key in list(load):
            if key not in known:
                self.bad(f"{where}.{key}", f"not supported; load_dataset_config takes {sorted(known)}")
                load.pop(key)
        return load

    def _pre_config(self, pre: dict, where: str) -> dict:
        kind = pre.pop("type", None)
        if kind in (None, "huggingface_pre_process", "text_classification_pre_process", "tokenize"):
            kind = "tokenize"
        # Olive fills model_name (the tokenizer) and task from the input model; so does olive-systems
        if pre.get("model_name") in self.model_names | {None}:
            pre.pop("model_name", None)
        if pre.get("task") in (self.task, None):
            pre.pop("task", None)
        for key, fix in (("model_name", "give that tokenizer's folder as the data config's tokenizer"),
                         ("task", "olive-systems pre-processes for the input model's task")):
            if key in pre:
                self.bad(f"{where}.{key}", f"{pre.pop(key)} is not the input model's: {fix}")
        if pre.get("trust_remote_code") in (False, None):
            pre.pop("trust_remote_code", None)
        if "label_cols" in pre:
            labels = pre.pop("label_cols") or []
            if len(labels) > 1:
                self.bad(f"{where}.label_cols", "more than one label column is not supported: give label_col")
            elif labels:
                pre["label_col"] = labels[0]
        known = set(self.data_schema["properties"]["pre_process_data_config"]["properties"])
        for key in list(pre):
            if key not in known:
                self.bad(f"{where}.{key}", f"not supported; pre_process_data_config takes {sorted(known - {'type'})}")
                pre.pop(key)
        return {"type": kind, **pre}

    def _post_config(self, post: dict, where: str) -> dict:
        post = dict(post)
        if post.get("type") in ("text_classification_post_process", "huggingface_post_process"):
            post["type"] = "argmax"
        for key in [key for key in post if key != "type"]:  # post-processing here is called without options
            self.bad(f"{where}.{key}", "not supported: post-processing here takes no options (post_process_data_config "
                                       "is {type: ...})")
            post.pop(key)
        return post
