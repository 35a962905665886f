"""A chat endpoint that runs the model inside the HTTP worker."""

from chat_app import ChatModel
from chat_request import MAX_BODY_BYTES, ChatRequest, check_input, require_json
from fastapi import Depends, FastAPI
from pydantic import BaseModel


class ChatResponse(BaseModel):
    response: str


app = FastAPI(title="Dirty chat")
# Bad input gets a clear JSON error before the model is asked (chat_request.py).
check_input(app)
model = ChatModel()


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.post(
    "/chat/sync",
    response_model=ChatResponse,
    dependencies=[Depends(require_json)],
    max_body_size=MAX_BODY_BYTES,
)
async def chat_sync(request: ChatRequest):
    # The model sleeps between words in this very process: while it does,
    # this worker's event loop can answer nobody else.
    return ChatResponse(response=model.generate(request.prompt))
