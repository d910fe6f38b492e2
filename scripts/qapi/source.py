"""Places in the schema files, and the error that names them."""

from dataclasses import dataclass


@dataclass
class Loc:
    """A line of a schema file."""
    file: str
    line: int

    def __str__(self):
        return f"{self.file}:{self.line}"


class SchemaError(Exception):
    """A problem in the schema, with the place it was found."""

    def __init__(self, loc, message):
        super().__init__(f"{loc}: {message}" if loc else message)
        self.loc = loc
        self.message = message
