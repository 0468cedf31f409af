"""Run training as several processes under Hugging Face Accelerate (`accelerate
launch`): data-parallel (DDP) on the CPUs or GPUs of one machine, or DeepSpeed ZeRO /
FSDP from an Accelerate config file (deploy/accelerate/). TRL's trainers are Accelerate
programs already, so nothing here distributes anything: this module writes a job's
inputs to a folder, starts `accelerate launch -m training.ml.launch FOLDER`, follows the
progress the main process writes there, and reads its result back.

Two kinds of work are launched, peers in `LAUNCHED`: a policy-update method, and a
reward model. Under several processes the trainer's steps run on all of them; only the
main process saves (methods/base.py:train_and_save) and, for a reward model, measures
held-out accuracy, normalizes and fits the ensemble.

Batch sizes in a config are per process: with N processes an optimizer step sees N
times as many examples, as in Accelerate and TRL.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 \\
        -m training.ml.launch /path/to/folder    # what run_launched starts

One job can span several machines (`machines` > 1): the worker that claimed it is
machine 0 and the main process's address; it starts the launch there and, through
`node_launcher` (a command template: ssh, srun, or "{command}" for a second "machine"
on this host), the same launch with machine ranks 1…N-1 on the others. The folder with
the job's inputs is beside its output, on the storage every machine shares.

No Django: a worker's job calls `LaunchConfig.train_method` / `train_reward_model` in
place of `Method.train` / `reward_training.train_reward_model`.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from training.ml.configs import config_from_dict, config_to_dict
from training.ml.engines import DEFAULT_ENGINE
from training.ml.loading import PolicyStart
from training.ml.methods.base import Method, TrainingInputs, TrainingResult
from training.ml.precision import DEFAULT_PRECISION
from training.ml.preference_pairs import PreferencePair
from training.ml.progress import StepReport
from training.ml.quantization import DEFAULT_QUANTIZATION
from training.ml.reward_scoring import RewardModelRef
from training.ml.reward_training import RewardTrainingConfig, RewardTrainingResult, train_reward_model
from training.ml.vllm_sampling import VLLM_GPU_MEMORY_UTILIZATION

INPUTS_FILE, PROGRESS_FILE, RESULT_FILE, LOG_FILE = "inputs.json", "progress.jsonl", "result.json", "launch.log"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class LaunchError(RuntimeError):
    """The launched processes failed; the message ends with the tail of their log."""


@dataclass(frozen=True)
class LaunchConfig:
    """How a worker trains: in its own process (the default), as `processes` processes
    under `accelerate launch`, or as an Accelerate config file says (DeepSpeed, FSDP,
    several machines; its num_processes wins when processes is 1)."""

    processes: int = 1
    """Processes per machine."""
    config_file: str = ""
    machines: int = 1
    """Machines one job spans; this one is machine 0."""
    main_process_ip: str = "127.0.0.1"
    """This machine's address as the other machines reach it."""
    main_process_port: int = 0
    """The port the processes meet on; 0: a free one, chosen per launch."""
    node_launcher: str = ""
    """How machine `{rank}` starts its part: a shell command template around
    `{command}`, e.g. `ssh gpu{rank} 'cd /srv/prefloop && {command}'`."""

    def __post_init__(self) -> None:
        if self.machines > 1 and "{command}" not in self.node_launcher:
            raise ValueError("a launch on several machines needs a node launcher: a command template that "
                             "contains {command} (and {rank}, the machine's rank), e.g. "
                             "\"ssh gpu{rank} 'cd /srv/prefloop && {command}'\"")

    @property
    def launched(self) -> bool:
        return self.processes > 1 or self.machines > 1 or bool(self.config_file)

    @property
    def process_count(self) -> int:
        """How many processes train: `processes`, or the config file's num_processes when
        processes is 1 (as `command` tells accelerate launch)."""
        if self.processes > 1 or not self.config_file:
            return self.processes * self.machines
        from accelerate.commands.config.config_args import load_config_from_file

        return load_config_from_file(self.config_file).num_processes * self.machines

    def describe(self) -> dict:
        """What a published version records of how it was trained."""
        return {"processes": self.process_count, **({"machines": self.machines} if self.machines > 1 else {}),
                **({"accelerate_config": self.config_file} if self.config_file else {})}

    def for_reward_model(self) -> LaunchConfig:
        """How reward models train here: in this process or under DDP, on this machine or
        several. An Accelerate config file (DeepSpeed, FSDP) is for policy updates: after
        training, a reward model's main process scores with the whole model alone."""
        return LaunchConfig(self.processes, machines=self.machines, main_process_ip=self.main_process_ip,
                            main_process_port=self.main_process_port, node_launcher=self.node_launcher)

    def train_method(self, method: Method, inputs: TrainingInputs, out_dir: Path, config,
                     on_step: StepReport | None = None) -> TrainingResult:
        if not self.launched:
            return method.train(inputs, out_dir, config, on_step)
        result = run_launched(self, "method", method_payload(method, inputs, out_dir, config), out_dir, on_step)
        return TrainingResult(**result)

    def train_reward_model(self, pairs: Sequence[PreferencePair], base_model_dir: Path, out_dir: Path,
                           config: RewardTrainingConfig, warm_start_dir: Path | None = None,
                           on_step: StepReport | None = None,
                           normalization_samples: Sequence[tuple] = (),
                           precision: str | None = None) -> RewardTrainingResult:
        launch = self.for_reward_model()
        if not launch.launched:
            return train_reward_model(pairs, base_model_dir, out_dir, config, warm_start_dir=warm_start_dir,
                                      on_step=on_step, normalization_samples=normalization_samples,
                                      precision=precision)
        payload = {"pairs": [asdict(pair) for pair in pairs], "base_model_dir": str(base_model_dir),
                   "out_dir": str(out_dir), "config": config_to_dict(config),
                   "warm_start_dir": str(warm_start_dir) if warm_start_dir else None,
                   "normalization_samples": [list(sample) for sample in normalization_samples],
                   "precision": precision}
        return RewardTrainingResult(**run_launched(launch, "reward_model", payload, out_dir, on_step))

    def command(self, folder: Path, machine_rank: int = 0, port: int | None = None) -> list[str]:
        """The launch on machine `machine_rank`; every machine of one launch gets the
        same `port` (by default a free one here: two launches at once, two workers on
        one machine, must not meet on torch's default 29500)."""
        # The launcher (torchrun's agent, in this process) ends when the worker that
        # started it dies, however it dies; its training processes end with it (main()).
        accelerate = [sys.executable, "-c", DIE_WITH_PARENT_THEN_RUN, "accelerate.commands.launch"]
        port = port or self.main_process_port or free_port()
        if self.config_file:
            accelerate += ["--config_file", self.config_file]
            if self.processes > 1 or self.machines > 1:
                accelerate += ["--num_processes", str(self.process_count)]
        else:
            # The torchrun launcher; on a machine without CUDA the trainers ask
            # Accelerate for CPU processes (use_cpu), which then talk over gloo.
            accelerate += ["--multi_gpu", "--num_processes", str(self.process_count), "--mixed_precision", "no",
                           "--dynamo_backend", "no"]
        if self.machines > 1:  # over what a config file says
            accelerate += ["--num_machines", str(self.machines), "--machine_rank", str(machine_rank),
                           "--main_process_ip", self.main_process_ip, "--main_process_port", str(port)]
        elif not self.config_file:
            accelerate += ["--num_machines", "1", "--main_process_port", str(port)]
        return [*accelerate, "-m", "training.ml.launch", str(folder)]

    def node_commands(self, folder: Path, port: int) -> list[str]:
        """The shell commands that start machines 1…N-1 of a launch on `port`."""
        return [self.node_launcher.format(rank=rank, command=shlex.join(self.command(folder, rank, port)))
                for rank in range(1, self.machines)]


# Linux's PR_SET_PDEATHSIG (survives exec): SIGTERM when the parent dies, even by SIGKILL.
PR_SET_PDEATHSIG = 1
DIE_WITH_PARENT_THEN_RUN = """
import ctypes, runpy, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def die_with_parent() -> None:
    """This process gets SIGTERM when its parent dies (Linux; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# What the launched processes run, by kind ---------------------------------------------

def method_payload(method: Method, inputs: TrainingInputs, out_dir: Path, config) -> dict:
    start, reward_model = inputs.start, inputs.reward_model
    return {
        "method": method.name, "config": config_to_dict(config), "out_dir": str(out_dir),
        "precision": inputs.precision, "gradient_checkpointing": inputs.gradient_checkpointing,
        "sampling_engine": inputs.sampling_engine, "frozen_quantization": inputs.frozen_quantization,
        "vllm_gpu_memory_utilization": inputs.vllm_gpu_memory_utilization,
        "start": {"base_model_dir": str(start.base_model_dir),
                  "adapter_dir": str(start.adapter_dir) if start.adapter_dir else None},
        "prompts": [list(messages) for messages in inputs.prompts],
        "pairs": [asdict(pair) for pair in inputs.pairs],
        "reward_model": None if reward_model is None else {
            "base_model_dir": str(reward_model.base_model_dir), "weights_dir": str(reward_model.weights_dir),
            "mean": reward_model.mean, "std": reward_model.std, "quantization": reward_model.quantization},
    }


def run_method(payload: dict, on_step: StepReport | None) -> dict:
    from training.ml.methods import method_named

    method = method_named(payload["method"])
    start = payload["start"]
    inputs = TrainingInputs(
        start=PolicyStart(Path(start["base_model_dir"]), Path(start["adapter_dir"]) if start["adapter_dir"] else None),
        prompts=payload["prompts"], pairs=[pair_from_dict(p) for p in payload["pairs"]],
        precision=payload.get("precision") or DEFAULT_PRECISION,
        gradient_checkpointing=payload.get("gradient_checkpointing") or "auto",
        sampling_engine=payload.get("sampling_engine") or DEFAULT_ENGINE,
        frozen_quantization=payload.get("frozen_quantization") or DEFAULT_QUANTIZATION,
        vllm_gpu_memory_utilization=payload.get("vllm_gpu_memory_utilization") or VLLM_GPU_MEMORY_UTILIZATION)
    if ref := payload["reward_model"]:
        inputs.reward_model = RewardModelRef(Path(ref["base_model_dir"]), Path(ref["weights_dir"]), ref["mean"],
                                             ref["std"], ref.get("quantization") or DEFAULT_QUANTIZATION)
    result = method.train(inputs, Path(payload["out_dir"]), method.config(payload["config"]), on_step)
    return asdict(result)


def run_reward_model(payload: dict, on_step: StepReport | None) -> dict:
    samples = [(prompt, text, ended, tuple(ids) if ids is not None else None)
               for prompt, text, ended, ids in payload["normalization_samples"]]
    result = train_reward_model(
        [pair_from_dict(p) for p in payload["pairs"]], Path(payload["base_model_dir"]), Path(payload["out_dir"]),
        config_from_dict(RewardTrainingConfig, payload["config"]),
        Path(payload["warm_start_dir"]) if payload["warm_start_dir"] else None, on_step, samples,
        payload.get("precision"))
    return asdict(result)


LAUNCHED: dict[str, Callable[[dict, StepReport | None], dict]] = {
    "method": run_method,
    "reward_model": run_reward_model,
}


def pair_from_dict(values: dict) -> PreferencePair:
    ids = {key: tuple(values[key]) if values.get(key) is not None else None for key in ("chosen_ids", "rejected_ids")}
    return PreferencePair(**{**values, **ids})


# The worker's side --------------------------------------------------------------------

def run_launched(launch: LaunchConfig, kind: str, payload: dict, out_dir: Path,
                 on_step: StepReport | None) -> dict:
    """Run `kind` under `accelerate launch` and wait, passing the main process's steps
    to `on_step`; returns the main process's result. Whatever stops this (a failure,
    Ctrl-C, the worker's own end) stops the launched processes too."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.launch-", dir=out_dir.parent) as name:
        folder = Path(name)
        (folder / INPUTS_FILE).write_text(json.dumps({"kind": kind, "payload": payload}), encoding="utf-8")
        with (folder / LOG_FILE).open("wb") as log:
            # From the project's root, whatever the worker's directory: `-m training.ml.launch`.
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
            port = launch.main_process_port or free_port()
            process = subprocess.Popen(launch.command(folder, 0, port), stdout=log, stderr=subprocess.STDOUT,
                                       env=env, cwd=PROJECT_ROOT, start_new_session=True)
            # The other machines' parts; their output goes to the same log.
            nodes = [subprocess.Popen(command, shell=True, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      cwd=PROJECT_ROOT, start_new_session=True)
                     for command in launch.node_commands(folder, port)]
            try:
                for line in follow_lines(folder / PROGRESS_FILE, process):
                    if on_step is not None:
                        on_step(line["step"], line["total"], line["metrics"])
            finally:
                for started in (process, *nodes):
                    stop(started)
        if process.returncode != 0 or not (folder / RESULT_FILE).is_file():
            tail = (folder / LOG_FILE).read_text(encoding="utf-8", errors="replace")[-3000:]
            what = payload.get("method", kind.replace("_", " "))
            # Not process_count: the config file may be what failed to load.
            how = [f"{launch.processes} processes"] if launch.processes > 1 else []
            how += [f"{launch.machines} machines"] if launch.machines > 1 else []
            how += [launch.config_file] if launch.config_file else []
            raise LaunchError(f"accelerate launch of {what} ({', '.join(how)}) exited with "
                              f"{process.returncode}; its log ends:\n{tail}")
        return json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))


def follow_lines(path: Path, process: subprocess.Popen, poll_seconds: float = 0.5) -> Iterator[dict]:
    """The JSON lines the main process appends, as they come, until it exits."""
    offset = 0
    while True:
        finished = process.poll() is not None
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                handle.seek(offset)
                while (line := handle.readline()).endswith("\n"):
                    offset += len(line.encode("utf-8"))
                    yield json.loads(line)
        if finished:
            return
        time.sleep(poll_seconds)


def stop(process: subprocess.Popen) -> None:
    """End the launcher and every process it started (its own session)."""
    # torchrun's agent gives its processes 30 s to end after a SIGTERM before it kills them.
    for sig, wait in ((signal.SIGTERM, 40), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue


# The launched processes' side --------------------------------------------------------

def is_main_process() -> bool:
    """Rank 0 of the launched processes (or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def json_default(value):
    """A logged value JSON does not know (a numpy or torch scalar): its number, else its text."""
    return value.item() if hasattr(value, "item") else str(value)


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # the launcher's agent: if it dies, so does this process
    folder = Path((argv or sys.argv[1:])[0])
    job = json.loads((folder / INPUTS_FILE).read_text(encoding="utf-8"))
    main_process = is_main_process()

    def report(step: int, total: int, metrics: dict) -> None:
        with (folder / PROGRESS_FILE).open("a", encoding="utf-8") as progress:
            progress.write(json.dumps({"step": step, "total": total, "metrics": metrics}, default=json_default) + "\n")

    result = LAUNCHED[job["kind"]](job["payload"], report if main_process else None)
    if main_process:
        partial = folder / (RESULT_FILE + ".partial")
        partial.write_text(json.dumps(result, default=json_default), encoding="utf-8")
        partial.replace(folder / RESULT_FILE)  # the worker never reads half a result


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(main)()  # a failing process's traceback reaches the launcher's summary (and the job's error)
