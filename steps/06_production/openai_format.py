"""The OpenAI chat-completions wire format, for POST /v1/chat/completions.

Only the part the official clients need: messages in, one choice out, either
as one JSON answer or as `chat.completion.chunk` events ending in [DONE].
"""

import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field, StrictBool, field_validator

MODEL_NAME = "dirty-chat"


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class CompletionRequest(BaseModel):
    model: str = MODEL_NAME
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False

    @field_validator("messages")
    @classmethod
    def has_a_user_message(cls, messages: list[Message]) -> list[Message]:
        if not any(message.role == "user" and message.content.strip() for message in messages):
            raise ValueError("messages must contain a non-blank user message")
        return messages

    @property
    def prompt(self) -> str:
        """The model answers the last thing the user said."""
        return next(m.content for m in reversed(self.messages) if m.role == "user")


class Completion:
    """Builds the answer objects of one completion, all with the same id."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def _base(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, prompt: str, tokens: int) -> dict:
        prompt_tokens = len(prompt.split())
        return self._base("chat.completion") | {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
        }

    def chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return self._base("chat.completion.chunk") | {
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        }
