"""One error type a user sees: it names the cause and the fix, and the CLI prints it as one line."""


class OliveSystemsError(Exception):
    """A problem the user can act on. `fix` says what to do about it."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class RecipeError(OliveSystemsError):
    """The recipe is malformed or refers to something that does not exist."""

    @classmethod
    def all_of(cls, errors: list["RecipeError"]) -> "RecipeError":
        """One error that carries every problem found, so the user fixes them all in one go."""
        if len(errors) == 1:
            return errors[0]
        error = cls("\n".join(f"{e.message} (fix: {e.fix})" if e.fix else e.message for e in errors),
                    f"{len(errors)} problems: each line names its own fix")
        error.problems = list(errors)
        return error

    @property
    def each(self) -> list["OliveSystemsError"]:
        """The separate problems (one for a plain error)."""
        return getattr(self, "problems", None) or [self]


class PassError(OliveSystemsError):
    """A pass failed on a model; the engine records it and carries on with the other flows."""


class CacheError(OliveSystemsError):
    """A cache entry is corrupt or unreadable; it is never used."""


class SystemUnavailable(OliveSystemsError):
    """A system cannot start or lacks what the recipe asks of it: every job there would fail, so the run stops."""
