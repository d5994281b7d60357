"""The base of every HTTP schema: camelCase on the wire, snake_case in Python."""

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    # from_attributes: a response is built straight from a handler's result (`model_validate(order)`).
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)
