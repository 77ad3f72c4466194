"""What the caller may do, applied where only the routes know the details.

The guard (``homeport.net``) decided who is calling before the route ran; here listings keep the
models the caller's globs allow, the caller's maximum ``num_ctx`` goes to the engine (which holds
the resolved options to it), and the tokens a generation used (also one cut short) are noted for
the audit log and the tokens-per-minute limit. One hook for both APIs: every generation starts
through ``start_generation``. (The model a request names is checked by ``common.check_model``,
where every route finds its model.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import Receive

from homeport.api import truncation
from homeport.api.common import state_of
from homeport.api.streaming import cancel_on_disconnect
from homeport.engine.parsing import ToolCall
from homeport.engine.service import Done, Generation, GenerationInput, Output
from homeport.errors import HomeportError
from homeport.net.caller import RequestRecord, caller_of, record_of
from homeport.store import ModelRecord


def may_use(request: Request, record: ModelRecord) -> bool:
    return caller_of(request.scope).grant.allows_model(record.name.display)


def visible(request: Request, records: list[ModelRecord]) -> list[ModelRecord]:
    """The models the caller may use, for listings."""
    return [record for record in records if may_use(request, record)]


def max_num_ctx(request: Request) -> int | None:
    """The largest context the caller may load a model with (the engine holds num_ctx to it)."""
    return caller_of(request.scope).grant.limits.max_num_ctx


@dataclass(frozen=True)
class WholeAnswer:
    """A generation gathered whole, for an answer that is not streamed."""

    content: str
    thinking: str
    tool_calls: tuple[ToolCall, ...]
    done: Done


class MeteredGeneration:
    """A generation whose token counts (and, when the owner asked, text) go to the request record,
    also when it ends early (the client left)."""

    def __init__(self, generation: Generation, record: RequestRecord) -> None:
        self._generation = generation
        self._record = record
        self._counted = False

    async def events(self) -> AsyncIterator[Output | Done]:
        try:
            async for event in self._generation.events():
                if isinstance(event, Output) and self._record.keep_text:
                    self._record.answer.append(event.content)
                yield event
        finally:
            self._count()

    async def close(self) -> None:
        await self._generation.close()
        self._count()

    async def encoded(self, encode: Callable[[Output | Done], Iterable[bytes]],
                      error: Callable[[HomeportError], bytes], *, before: Iterable[bytes] = (),
                      after: Iterable[bytes] = ()) -> AsyncIterator[bytes]:
        """A streamed answer on the wire: ``before``, every event encoded, ``after``. An error
        once the stream has started is one more record; the generation is closed however the
        stream ends (the client leaving included)."""
        try:
            for chunk in before:
                yield chunk
            async for event in self.events():
                for chunk in encode(event):
                    yield chunk
            for chunk in after:
                yield chunk
        except HomeportError as exc:
            yield error(exc)
        finally:
            await self.close()

    async def whole(self, receive: Receive) -> WholeAnswer:
        """Every event gathered; cancelled (the slot freed) if the client leaves meanwhile."""
        content: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCall] = []
        done: list[Done] = []

        async def gather() -> None:
            async for event in self.events():  # which close the generation however they end
                if isinstance(event, Output):
                    content.append(event.content)
                    thinking.append(event.thinking)
                    calls.extend(event.tool_calls)
                else:
                    done.append(event)

        await cancel_on_disconnect(receive, gather())
        return WholeAnswer("".join(content), "".join(thinking), tuple(calls), done[-1])

    def _count(self) -> None:
        if not self._counted:
            self._counted = True
            prompt, generated = self._generation.tokens_used
            self._record.tokens_in += prompt
            self._record.tokens_out += generated


def _prompt_text(generation_input: GenerationInput) -> str:
    if generation_input.messages:
        return generation_input.messages[-1].content
    return generation_input.prompt or ""


async def start_generation(request: Request, generation_input: GenerationInput
                           ) -> MeteredGeneration:
    """Start a generation for this caller (num_ctx capped), metered; cancelled if the client goes."""
    generation_input.max_num_ctx = max_num_ctx(request)
    record = record_of(request.scope)
    if record.keep_text:
        record.prompt = _prompt_text(generation_input)
    engine = state_of(request).engine
    generation = await cancel_on_disconnect(request.receive,
                                            engine.start_generation(generation_input))
    truncation.note(request.scope, generation)
    return MeteredGeneration(generation, record)


def note_embedding_tokens(request: Request, tokens: int) -> None:
    record_of(request.scope).tokens_in += tokens
