"""A generator in a process of its own: the model's Python never shares a GIL with the worker.

A diffusers pipeline spends much of each step in Python (module calls, scheduler arithmetic,
kernel launches: SD-Turbo on an H200 is launch-bound). In the worker's process it shares the
interpreter lock with the event loop (AMQP frames, Redis replies, message validation) and the
PNG encoder, so every millisecond of serving work delays the next kernel launch. Measured on
the tiny pipeline (`make bench-worker`): the worker process never used more than one core, and
each batch took 70 ms instead of the bare loop's 51 ms, with the pipeline itself never idle.

So the model runs in a child process (`python -m shared.backends.model_process`) that the
worker owns for its lifetime:

- the child holds the model (and, for diffusers, the pinned host-memory cache of the models it
  switched away from), and answers `load`, `generate` and `unload` requests, one at a time;
- requests and replies are frames on two pipes: a 4-byte length, an orjson header (pydantic
  models), then raw RGB pixels (no pickle, no PNG: the worker encodes, off the model's path);
- the child's stdout is the worker's stderr, so nothing a library prints can corrupt a frame;
- a batch's cancel flags and its step go through a control block of shared memory (control.py)
  that both map: the child reads no request while it generates, but it reads the block at every
  denoising step, and ends a batch whose jobs are all cancelled (GenerationCancelled).

Bounds: a load must answer within `load_timeout_s`, a batch within `generate_timeout_s`. A child
that misses a bound is killed; one that dies is restarted (and its model reloaded) on the next
request, at most MAX_RESTARTS times in RESTART_WINDOW_S; then `ModelProcessFailed` is raised,
which the worker treats as fatal. The child exits when the worker's pipe closes, and gets
SIGKILL if the worker dies first (Linux parent-death signal).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Annotated, BinaryIO, Literal

from PIL import Image
from pydantic import Field, TypeAdapter

from shared.backends.base import Generated, GenerationInput, Generator
from shared.backends.control import (
    NO_CONTROL,
    BatchBook,
    ControlBlock,
    GenerationCancelled,
    GenerationPaused,
    StepControl,
)
from shared.backends.frames import (
    PREVIEW_PREFIX,
    ImageFrame,
    Message,
    PreviewFrame,
    ReadStream,
    image_frames,
    read_exactly,
    read_header,
    take_preview,
    write_frame,
)
from shared.backends.previews import Preview, PreviewSink, with_previews
from shared.errors import BackendFailed
from shared.profiles import ModelProfile, load_profile

MAX_RESTARTS = 3
RESTART_WINDOW_S = 600.0
CLOSE_WAIT_S = 10.0
STDERR_FD = 2  # the child's stdout: whatever a library prints goes to the worker's log, not a frame


class ModelProcessDied(BackendFailed):
    """The model's process exited, crashed or missed its time bound during a request. The batch
    is retried like any failed batch (it is split, so a job that kills the model fails alone)."""


class ModelProcessFailed(Exception):
    """The model's process keeps dying: this worker cannot serve (fatal; not a job's fault)."""


class LoadRequest(Message):
    op: Literal["load"] = "load"
    kind: str
    profile: str
    model: str
    device: str = "cpu"
    dtype: str = "auto"
    time_scale: float = 1.0
    fail_pattern: str | None = None
    keep: list[str] = []  # models loaded before that stay loaded beside this one (hosts.py)


class GenerateRequest(Message):
    op: Literal["generate"] = "generate"
    inputs: list[GenerationInput]
    seq: int = 0  # the batch's slot in the control block (0: none)
    first_step: int = 0  # a paused batch resumed: the steps it had run
    model: str | None = None  # which of the models loaded (None: the last loaded)


class UnloadRequest(Message):
    op: Literal["unload"] = "unload"


Request = Annotated[LoadRequest | GenerateRequest | UnloadRequest, Field(discriminator="op")]
REQUEST = TypeAdapter(Request)


class Reply(Message):
    ok: bool
    error_type: str | None = None
    error: str | None = None
    images: list[ImageFrame] = []
    seconds: float = 0.0
    can_pause: bool = False  # a load's: the generator loaded can pause a batch (Generator.can_pause)
    paused_at: int | None = None  # a batch paused (GenerationPaused): the steps it had run


def warm_generator(spec: LoadRequest, model: ModelProfile) -> Generator:
    """The generator `spec` names, warmed up: what a host, here or in the child, holds."""
    from shared.backends import make_generator

    generator = make_generator(spec.kind, model, device=spec.device, time_scale=spec.time_scale, dtype=spec.dtype,
                               fail_pattern=spec.fail_pattern)
    generator.warm_up()
    return generator


# The child -----------------------------------------------------------------------------------

class ModelServer:
    """The child's side: the generators loaded (one, or two: LoadRequest.keep), built by the same
    factory the worker uses; `generator` the last loaded."""

    def __init__(self, block: ControlBlock | None = None, replies: BinaryIO | None = None) -> None:
        self.generators: dict[str, Generator] = {}
        self.generator: Generator | None = None
        self.block = block  # the worker's control block (cancel flags, steps), when it shares one
        self.replies = replies  # where previews go as they are made (none: a batch makes none)

    def handle(self, request: LoadRequest | GenerateRequest | UnloadRequest) -> tuple[Reply, list[bytes]]:
        started = time.perf_counter()
        if isinstance(request, LoadRequest):
            self.load(request)
            assert self.generator is not None
            return Reply(ok=True, seconds=time.perf_counter() - started, can_pause=self.generator.can_pause), []
        if isinstance(request, UnloadRequest):
            self.unload()
            return Reply(ok=True), []
        generator = self.generators.get(request.model) if request.model is not None else self.generator
        if generator is None:
            raise RuntimeError(f"model {request.model} is not loaded" if request.model else "no model is loaded")
        control = (self.block.control(request.seq, request.first_step if generator.can_pause else 0)
                   if self.block is not None and request.seq else NO_CONTROL)
        control = with_previews(control, request.inputs, generator.model.steps,
                                self.send_preview if self.replies is not None else None)
        images = generator.generate_measured(request.inputs, control, started)  # a pause's time: Reply.seconds
        frames, pixels = image_frames(images)
        return Reply(ok=True, images=frames, seconds=time.perf_counter() - started), pixels

    def send_preview(self, preview: Preview) -> None:
        assert self.replies is not None  # only a server with a reply pipe is given previews
        write_frame(self.replies, PreviewFrame(job_id=preview.job_id, index=preview.index, step=preview.step,
                                               steps=preview.steps, format=preview.format, size=len(preview.data)),
                    [preview.data])

    def load(self, request: LoadRequest) -> None:
        for name in [name for name in self.generators if name not in request.keep and name != request.model]:
            self.generators.pop(name).close()
        self.generator = self.generators.get(request.model)
        if self.generator is None:
            self.generator = warm_generator(request, load_profile(request.profile).model(request.model))
            self.generators[request.model] = self.generator

    def unload(self) -> None:
        self.generator = None
        while self.generators:
            self.generators.popitem()[1].close()


def serve(requests: ReadStream, replies: BinaryIO, block: ControlBlock | None = None) -> None:
    server = ModelServer(block, replies)
    while True:
        try:
            header = read_header(requests)
        except EOFError:
            break  # the worker closed its end: it is stopping, or gone
        try:
            reply, blobs = server.handle(REQUEST.validate_json(header))
        except GenerationPaused as paused:
            reply, blobs = Reply(ok=False, error_type=GenerationPaused.__name__, error=str(paused),
                                 paused_at=paused.step, seconds=paused.busy_s or 0.0), []
        except Exception as error:
            reply, blobs = Reply(ok=False, error_type=type(error).__name__, error=str(error)[:2000]), []
        write_frame(replies, reply, blobs)
    server.unload()


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the worker dies (Linux), so a killed worker leaves no model holding a GPU.
    The signal follows the *thread* that started the child: the worker starts it from its model
    executor's threads, which live as long as the worker."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def child_main(argv: list[str]) -> None:
    from shared.logging import configure
    from shared.settings import get_settings

    request_fd, reply_fd, parent_pid, control_fd = (int(value) for value in argv[:4])
    _die_with_parent(parent_pid)
    if len(argv) > 4:
        # Before torch starts a thread: threads inherit the CPUs of the thread that starts them.
        os.sched_setaffinity(0, {int(cpu) for cpu in argv[4].split(",")})
    configure(get_settings(), "model-process")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when this process ends
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with os.fdopen(request_fd, "rb") as requests, os.fdopen(reply_fd, "wb") as replies:
        serve(requests, replies, ControlBlock.attach(control_fd))


# The worker's side ---------------------------------------------------------------------------

@dataclass
class Pending:
    """A request written to the child, waiting for its reply (replies come in request order)."""

    timeout_s: float
    sent_at: float = field(default_factory=time.perf_counter)
    reply: Future = field(default_factory=Future)  # (Reply, pixels, seconds)
    on_preview: PreviewSink | None = None  # takes the previews that come before the reply
    waited_from: float | None = None  # when the reader began to wait for it: previews do not extend its bound

    def remaining_s(self) -> float:
        if self.waited_from is None:
            self.waited_from = time.perf_counter()
        return max(self.timeout_s - (time.perf_counter() - self.waited_from), 0.0)


class ModelProcess:
    """The worker's handle on its model process: starts it, writes requests, and has a reader
    thread match the replies to them. Requests may be written while earlier ones run, so the
    child starts batch k+1 the moment it has replied to batch k."""

    def __init__(self, *, load_timeout_s: float, generate_timeout_s: float,
                 cpus: frozenset[int] | None = None) -> None:
        self.load_timeout_s = load_timeout_s
        self.generate_timeout_s = generate_timeout_s
        self.cpus = cpus  # where the child may run (None: anywhere)
        self.lock = threading.Lock()  # guards the child, its request pipe, `pending` and `loaded`
        self.process: subprocess.Popen | None = None
        self.requests: BinaryIO | None = None
        self.pending: deque[Pending] = deque()
        self.loaded: dict[str, LoadRequest] = {}  # the models the child holds, in the order loaded
        self.deaths: list[float] = []
        self.book = BatchBook(ControlBlock.shared())  # its memory is the child's too (every child's)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def load(self, request: LoadRequest) -> bool:
        """Load the model; whether its generator can pause a batch."""
        return self.call(request, self.load_timeout_s)[0].can_pause

    def generate(self, inputs: list[GenerationInput], on_preview: PreviewSink | None = None,
                 first_step: int = 0, model: str | None = None) -> Generated:
        """The batch's images; its seconds run from the end of the batch before it (or from
        sending, if the child was idle) to its reply, its busy time is the child's own. Previews
        go to `on_preview` (on the reader thread) as the child makes them."""
        job_ids = [item.job_id for item in inputs]
        seq = self.book.begin(job_ids)
        if on_preview is None:  # nobody takes them: the child makes none
            inputs = [replace(item, previews=0) if item.previews else item for item in inputs]
        try:
            reply, pixels, seconds = self.call(GenerateRequest(inputs=inputs, seq=seq, first_step=first_step,
                                                               model=model), self.generate_timeout_s, on_preview)
        finally:
            self.book.end(job_ids)
        images = [Image.frombytes(frame.mode, (frame.width, frame.height), data)
                  for frame, data in zip(reply.images, pixels, strict=True)]
        return Generated(images, seconds, reply.seconds)

    def unload(self) -> None:
        if self.alive:
            self.call(UnloadRequest(), self.load_timeout_s)

    def call(self, request: Request, timeout_s: float, on_preview: PreviewSink | None = None
             ) -> tuple[Reply, list[bytes], float]:
        reply, pixels, seconds = self.send(request, timeout_s, on_preview).reply.result()
        if not reply.ok and reply.error_type == GenerationCancelled.__name__:
            raise GenerationCancelled(reply.error)
        if not reply.ok and reply.error_type == GenerationPaused.__name__:
            raise GenerationPaused(reply.paused_at or 0, reply.seconds)
        if not reply.ok:
            raise BackendFailed(f"{reply.error_type}: {reply.error}")
        return reply, pixels, seconds

    def send(self, request: Request, timeout_s: float, on_preview: PreviewSink | None = None) -> Pending:
        """Write the request (starting the child, or restarting it with its last model, first)."""
        pending = Pending(timeout_s, on_preview=on_preview)
        with self.lock:
            try:
                if not self.alive:
                    self.start(reload=not isinstance(request, LoadRequest))
                self.pending.append(pending)
                assert self.requests is not None  # set and cleared with the process, under the lock
                write_frame(self.requests, request)
            except OSError as error:
                ended, reason = self.detach(), f"{request.op}: {error}"
            else:
                self.remember(request)
                return pending
        end_child(*ended, reason)
        return pending

    def remember(self, request: Request) -> None:
        """The models the child holds after `request` (the lock is held): what a restart reloads."""
        if isinstance(request, UnloadRequest):
            self.loaded = {}
        elif isinstance(request, LoadRequest):
            self.loaded = {name: held for name, held in self.loaded.items()
                           if name in request.keep and name != request.model}
            self.loaded[request.model] = request

    def start(self, reload: bool) -> None:
        """A new child and a reader thread for its replies (the lock is held). `reload`: one died,
        so its model is loaded again first, a bounded number of times."""
        if self.process is not None:
            end_child(*self.detach(), "replaced")
        if reload and self.loaded:
            now = time.monotonic()
            self.deaths = [at for at in self.deaths if now - at < RESTART_WINDOW_S] + [now]
            if len(self.deaths) > MAX_RESTARTS:
                raise ModelProcessFailed(f"the model process died {len(self.deaths)} times in "
                                         f"{RESTART_WINDOW_S:.0f} s")
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        control_fd = self.book.block.fd
        assert control_fd is not None  # a shared block has one
        command = [sys.executable, "-m", "shared.backends.model_process",
                   str(request_read), str(reply_write), str(os.getpid()), str(control_fd)]
        if self.cpus:
            command.append(",".join(str(cpu) for cpu in sorted(self.cpus)))
        try:
            self.process = subprocess.Popen(command, pass_fds=(request_read, reply_write, control_fd),
                                            stdin=subprocess.DEVNULL, stdout=STDERR_FD)
        finally:
            os.close(request_read)
            os.close(reply_write)
        self.requests = os.fdopen(request_write, "wb")
        # Unbuffered, so that select() on the pipe sees every byte not yet read.
        replies = os.fdopen(reply_read, "rb", buffering=0)
        threading.Thread(target=self.read_replies, args=(self.process, replies), daemon=True,
                         name=f"model-process-{self.process.pid}").start()
        if reload:  # each model as it was, the ones before it kept beside it
            for index, request in enumerate(self.loaded.values()):
                self.pending.append(Pending(self.load_timeout_s))
                write_frame(self.requests, request.model_copy(update={"keep": list(self.loaded)[:index]}))

    def read_replies(self, process: subprocess.Popen, replies: ReadStream) -> None:
        """The reader thread of one child: replies in request order, each within its bound."""
        with replies:
            last_end = 0.0
            while True:
                with self.lock:
                    if self.process is not process:
                        return
                    head = self.pending[0] if self.pending else None
                if head is None:
                    # Requests are listed before they are written, so bytes with none listed
                    # mean the child closed its end (or broke the protocol).
                    if wait_readable(replies, 0.1) and self.owns_nothing(process):
                        self.kill("the model process exited", process)
                        return
                    continue
                try:
                    if not wait_readable(replies, head.remaining_s()):
                        raise TimeoutError(f"no reply within {head.timeout_s:g} s")
                    header = read_header(replies)
                    if header.startswith(PREVIEW_PREFIX):  # a preview of this batch: its reply is still to come
                        take_preview(header, replies, head.on_preview)
                        continue
                    reply = Reply.model_validate_json(header)
                    pixels = [read_exactly(replies, frame.size) for frame in reply.images]
                except (OSError, EOFError, ValueError, TimeoutError) as error:
                    self.kill(f"{type(error).__name__}: {error}", process)
                    return
                end = time.perf_counter()
                with self.lock:
                    self.pending.popleft()
                head.reply.set_result((reply, pixels, end - max(last_end, head.sent_at)))
                last_end = end

    def owns_nothing(self, process: subprocess.Popen) -> bool:
        with self.lock:
            return self.process is process and not self.pending

    def kill(self, reason: str, process: subprocess.Popen) -> None:
        """End this child, if it is still the current one, and fail every request it had."""
        with self.lock:
            if self.process is not process:
                return
            ended = self.detach()
        end_child(*ended, reason)

    def detach(self) -> tuple[subprocess.Popen | None, list[Pending]]:
        """Forget the child and its requests (the lock is held); `end_child` finishes them."""
        child, self.process = self.process, None
        failed, self.pending = list(self.pending), deque()
        if self.requests is not None:
            close_quietly(self.requests)
            self.requests = None
        return child, failed

    def close(self) -> None:
        """Close the request pipe: the child finishes what it has, unloads and exits (it is
        killed after CLOSE_WAIT_S)."""
        with self.lock:
            ended = self.detach()
            self.loaded = {}
        end_child(*ended, "the model process was closed", wait_s=CLOSE_WAIT_S)


def end_child(child: subprocess.Popen | None, failed: list[Pending], reason: str, wait_s: float = 0.0) -> None:
    code = None
    if child is not None:
        try:
            code = child.wait(timeout=wait_s) if wait_s else None
        except subprocess.TimeoutExpired:
            pass
        if code is None:
            child.kill()
            code = child.wait()
    for pending in failed:
        if not pending.reply.done():
            pending.reply.set_exception(ModelProcessDied(f"{reason} (exit code {code})"))


def wait_readable(stream: ReadStream, timeout_s: float) -> bool:
    ready, _, _ = select.select([stream], [], [], timeout_s)
    return bool(ready)


def close_quietly(stream: BinaryIO) -> None:
    try:
        stream.close()
    except OSError:
        pass


class ProcessGenerator(Generator):
    """A Generator whose model runs in the worker's model process. Batches may be sent from
    several threads: the child runs them one after the other, in the order they were sent."""

    def __init__(self, model: ModelProfile, process: ModelProcess, can_pause: bool = False) -> None:
        super().__init__(model)
        self.process = process
        self.book = process.book  # cancels, pauses and progress go to the child's batches
        self.can_pause = can_pause  # the child's generator's

    def generate(self, batch: list[GenerationInput], control: StepControl = NO_CONTROL) -> list[Image.Image]:
        return self.generate_timed(batch).images

    def generate_timed(self, batch: list[GenerationInput], on_preview: PreviewSink | None = None,
                       first_step: int = 0) -> Generated:
        if not batch:
            return Generated([], 0.0, 0.0)
        return self.process.generate(batch, on_preview, first_step, self.model.name)  # the child checks can_pause

    def close(self) -> None:
        self.process.unload()


if __name__ == "__main__":
    child_main(sys.argv[1:])
