"""The systems and evaluators of an Olive config."""

from __future__ import annotations

from .tables import DEVICE_EPS, SUB_TYPE_ALIASES, SYSTEM_TYPES


class SystemsAndMetrics:
    """Mixed into the translator: systems (accelerators, azureml_client) and evaluators (metrics)."""

    def system_section(self, systems: dict) -> None:
        for sys_name, system in systems.items():
            self.systems[sys_name] = self.system(system, f"systems.{sys_name}")

    def system(self, system: dict, where: str) -> dict:
        system = self._flat(system)
        kind = system.pop("type", None)
        native_kind = SYSTEM_TYPES.get(kind)
        if native_kind is None:
            self.bad(f"{where}.type", f"{kind} is not supported; systems here: LocalSystem, Docker, PythonEnvironment, AzureML")
            return {"type": "LocalSystem"}
        native: dict = {"type": native_kind}
        accelerators = system.pop("accelerators", None)
        if accelerators:
            native["accelerators"] = [self.accelerator(a, f"{where}.accelerators[{i}]") for i, a in enumerate(accelerators)]
        elif self.execution_providers:
            device = "gpu" if any("CUDA" in ep or "Tensorrt" in ep or "DML" in ep for ep in self.execution_providers) else "cpu"
            native["accelerators"] = [{"device": device, "execution_providers": list(self.execution_providers)}]
        if system.pop("olive_managed_env", False):
            self.bad(f"{where}.olive_managed_env", "not supported: use a VenvSystem (PythonEnvironment) with requirements")
        if "requirements_file" in system:
            native["requirements"] = system.pop("requirements_file")
        if native_kind == "VenvSystem" and "python_environment_path" in system:
            native["python"] = f"{str(system.pop('python_environment_path')).rstrip('/')}/python"
        if native_kind == "AzureMLSystem":
            if "aml_compute" in system:
                native["compute"] = system.pop("aml_compute")
            client = system.pop("azureml_client_config", None) or self.azureml_client
            if client:
                native.update(self._azureml_client(client, "azureml_client"))
            docker = system.pop("aml_docker_config", None)
            if docker:
                if set(docker) - {"base_image"}:
                    self.bad(f"{where}.aml_docker_config", "only base_image is supported (as environment_image): "
                                                           "build the conda environment into the image")
                if docker.get("base_image"):
                    native["environment_image"] = docker["base_image"]
            if system.get("is_dev") in (False, None):
                system.pop("is_dev", None)
        native_props = self.schema["properties"]["systems"]["additionalProperties"]["properties"]
        for key, value in system.items():
            if key in native_props:
                native[key] = value
            elif key == "local_docker_config":
                self.bad(f"{where}.local_docker_config", "olive-systems builds its own images: use image: cpu | openvino | cuda "
                                                         "(or image_tag for an image you built from images/)")
            else:
                self.bad(f"{where}.{key}", f"not supported for {native_kind}")
        return native

    def accelerator(self, accelerator, where: str) -> dict:
        if isinstance(accelerator, str):  # the seed form: "cpu", with engine.execution_providers
            device = accelerator.lower()
            eps = self.execution_providers or DEVICE_EPS.get(device)
            return {"device": device, "execution_providers": list(eps)} if eps else {"device": device}
        accelerator = dict(accelerator)
        native = {"device": str(accelerator.pop("device", "cpu")).lower()}
        eps = accelerator.pop("execution_providers", None) or self.execution_providers
        if eps:
            native["execution_providers"] = list(eps)
        for key in accelerator:
            self.bad(f"{where}.{key}", "not supported; an accelerator here is {device, execution_providers}")
        return native

    def _azureml_client(self, client: dict, where: str) -> dict:
        client = dict(client)
        native: dict = {}
        if "keyvault_name" in client:
            native["keyvault_name"] = client.pop("keyvault_name")
        workspace = {key: client.pop(key) for key in ("subscription_id", "resource_group", "workspace_name") if key in client}
        if "aml_config_path" in client:
            workspace["config_path"] = client.pop("aml_config_path")
        for key in client:
            self.bad(f"{where}.{key}", "not supported: olive-systems uses DefaultAzureCredential and the SDK's retries; remove it")
        native["azureml_client"] = workspace
        return native

    # ---- evaluators ----

    def evaluator(self, ev_name: str, evaluator: dict) -> None:
        evaluator = self._flat(evaluator)
        evaluator.pop("name", None)
        if evaluator.pop("type", "OliveEvaluator") not in ("OliveEvaluator", None):
            self.bad(f"evaluators.{ev_name}.type", "only Olive's default evaluator is supported; remove type")
        metrics = [self.metric(m, f"evaluators.{ev_name}.metrics[{i}]") for i, m in enumerate(evaluator.pop("metrics", []))]
        for key in evaluator:
            self.bad(f"evaluators.{ev_name}.{key}", "not supported; an evaluator here has metrics only")
        self.evaluators[ev_name] = {"metrics": metrics}

    def metric(self, metric: dict, where: str) -> dict:
        metric = dict(metric)
        native_props = self.metric_schema["properties"]
        native: dict = {"name": metric.pop("name", None), "type": metric.pop("type", None)}
        backend = metric.pop("backend", None)
        backends = native_props.get("backend", {}).get("enum", [])
        if backend == "huggingface_metrics" and backend in backends:
            native["backend"] = backend
        elif backend not in (None, "torch_metrics"):  # torch_metrics: Olive's default, olive-systems' own scores here
            self.bad(f"{where}.backend", f"{backend} is not supported: use one of {backends or ['(none)']}")
        if native["type"] not in self.metric_types:
            self.bad(f"{where}.type", f"{native['type']} is not a metric type here: {sorted(self.metric_types)}")
            return native
        data = metric.pop("data_config", None)
        if isinstance(data, dict):  # an inline data config (older Olive): named and listed
            data = self.data_config(data, f"{where}.data_config")
        data = data or self.input_data
        if data:
            native["data_config"] = data
        known = self.metric_types[native["type"]]
        sub_types, metric_config = [], dict(metric.pop("metric_config", None) or {})
        for index, sub in enumerate(metric.pop("sub_types", None) or metric.pop("subtypes", None) or []):
            sub = dict(sub)
            sub_where = f"{where}.sub_types[{index}]"
            name = sub.pop("name", None)
            if known and name not in known and "backend" not in native:
                alias = SUB_TYPE_ALIASES.get(native["type"], {}).get(name)
                if alias in known:
                    name = alias
                else:
                    self.bad(f"{sub_where}.name", f"{name} is not a {native['type']} sub-type here: {sorted(known)}")
            entry = {"name": name}
            priority = sub.pop("priority", None)
            if priority is not None and priority > 0:  # Olive's -1 / 0: not ranked
                entry["priority"] = priority
            for key in ("higher_is_better", "goal"):
                if key in sub:
                    entry[key] = sub.pop(key)
            sub_config = dict(sub.pop("metric_config", None) or {})
            if "backend" in native and sub_config:  # evaluate's compute() arguments
                sub_config.update(sub_config.pop("compute_params", None) or {})
                for key in ("load_params", "result_key"):
                    if sub_config.pop(key, None):
                        self.bad(f"{sub_where}.metric_config.{key}", "not supported: a sub-type here is an evaluate "
                                                                     "metric by name, its result the value of that name")
                if sub_config:
                    entry["metric_config"] = sub_config
            elif sub_config and sub_config not in ({"task": "binary"},):
                self.bad(f"{sub_where}.metric_config", "torchmetrics settings are not supported: binary and macro "
                                                       "scores come from the labels; remove it")
            for key in sub:
                self.bad(f"{sub_where}.{key}", "not supported; a sub-type here takes name, priority, higher_is_better, goal")
            sub_types.append(entry)
        native["sub_types"] = sub_types
        if metric_config:
            native["metric_config"] = metric_config
        user = dict(metric.pop("user_config", None) or {})
        if user:
            native_user = {}
            for key in ("user_script", "metric_func"):
                if key in user:
                    native_user[key] = user.pop(key)
            if user.get("script_dir") is None:
                user.pop("script_dir", None)
            for key in user:
                hint = ("describe the data in data_configs and name it in data_config" if key in
                        ("data_dir", "batch_size", "dataloader_func", "post_processing_func", "input_names",
                         "input_shapes", "input_types") else "inference settings come from the candidate "
                        "(OrtSessionParamsTuning)" if key in ("inference_settings", "io_bind") else
                        "write a metric_func" if key == "evaluate_func" else "remove it")
                self.bad(f"{where}.user_config.{key}", f"not supported: {hint}")
            if native_user:
                native["user_config"] = native_user
        for key in metric:
            if key in native_props:
                native[key] = metric[key]
            else:
                self.bad(f"{where}.{key}", "not supported in a metric here")
        return native
