"""The Accelerate launcher's own parts, without a model: the command it starts, the
shipped configs, following the main process's progress, stopping every launched
process, and inputs surviving the trip through the folder. The launched training itself
is tested with the methods (tests/test_policy_methods.py) and the reward model
(tests/test_reward_model_training.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from training.ml.launch import LaunchConfig, LaunchError, follow_lines, pair_from_dict, run_launched, stop
from training.ml.preference_pairs import PreferencePair

CONFIGS = Path(__file__).resolve().parents[1] / "deploy" / "accelerate"


def test_one_process_trains_in_place_and_more_go_through_accelerate_launch():
    assert not LaunchConfig().launched
    command = LaunchConfig(processes=2).command(Path("/tmp/job"))
    assert command[0] == sys.executable and command[3] == "accelerate.commands.launch"  # behind die-with-parent
    assert command[command.index("--num_processes") + 1] == "2" and "--multi_gpu" in command
    ports = {LaunchConfig(processes=2).command(Path("/tmp/job"))[command.index("--main_process_port") + 1]
             for _ in range(3)}
    assert len(ports) > 1  # each launch its own port, not torch's 29500 for all
    assert command[-3:] == ["-m", "training.ml.launch", "/tmp/job"]
    configured = LaunchConfig(config_file="deploy/accelerate/fsdp.yaml")
    assert configured.launched and "--num_processes" not in configured.command(Path("/tmp/job"))
    assert configured.command(Path("/tmp/job"))[4:6] == ["--config_file", "deploy/accelerate/fsdp.yaml"]


def test_a_version_records_the_processes_that_trained_it():
    fsdp = str(CONFIGS / "fsdp.yaml")
    configured = LaunchConfig(config_file=fsdp)
    assert configured.describe() == {"processes": 8, "accelerate_config": fsdp}  # the file's num_processes
    resized = LaunchConfig(processes=2, config_file=fsdp)
    assert resized.describe()["processes"] == 2 and resized.command(Path("/tmp/job"))[6:8] == ["--num_processes", "2"]
    # Reward models ignore the file (they train in place or under DDP) and record that.
    assert not configured.for_reward_model().launched
    assert configured.for_reward_model().describe() == {"processes": 1}
    assert resized.for_reward_model().describe() == {"processes": 2}


def test_a_config_file_that_cannot_be_read_fails_the_launch_with_its_name_and_log(tmp_path):
    missing = str(tmp_path / "no-such-fsdp.yaml")
    expected = r"accelerate launch of sft_chosen \(.*no-such-fsdp\.yaml\) exited with"
    with pytest.raises(LaunchError, match=expected) as failed:
        run_launched(LaunchConfig(config_file=missing), "method", {"method": "sft_chosen"}, tmp_path / "out", None)
    assert "its log ends:" in str(failed.value) and "no-such-fsdp.yaml" in str(failed.value).split("its log ends:")[1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("deepspeed-zero2", "DEEPSPEED"),
                                        ("deepspeed-zero3", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_the_shipped_configs_load_with_accelerates_reader(name, kind):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.name == kind and config.num_processes >= 2 and not config.use_cpu
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_progress_lines_are_followed_as_they_are_written_and_to_the_last_one(tmp_path):
    progress = tmp_path / "progress.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", f"""
import json, time
for step in range(1, 4):
    with open({str(progress)!r}, "a") as f:
        f.write(json.dumps({{"step": step}}) + "\\n")
    time.sleep(0.3)
"""])
    seen = [(line["step"], writer.poll()) for line in follow_lines(progress, writer, poll_seconds=0.05)]
    assert [step for step, _ in seen] == [1, 2, 3]
    assert seen[0][1] is None  # read while the writer still ran


def test_stopping_a_launch_ends_the_processes_it_started(tmp_path):
    pid_file = tmp_path / "child.pid"
    launcher = subprocess.Popen(
        [sys.executable, "-c", f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open({str(pid_file)!r}, "w").write(str(child.pid))
time.sleep(60)
"""], start_new_session=True)
    deadline = time.monotonic() + 20
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    stop(launcher)
    assert launcher.poll() is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":  # exited, not yet reaped
            return
        time.sleep(0.05)
    raise AssertionError("the launcher's child outlived stop()")


def test_preference_pairs_survive_the_folder():
    pair = PreferencePair(7, [{"role": "user", "content": "Q?"}], "yes", "no", 2, True, False, (1, 2, 3), None, True)
    assert pair_from_dict(json.loads(json.dumps(asdict(pair)))) == pair


def test_a_launch_dies_with_the_worker_that_started_it_even_by_sigkill(tmp_path):
    """A worker killed outright (out of memory, a hard time limit) must not leave its
    training running on the GPUs: the launcher gets SIGTERM when its parent dies."""
    import signal

    from training.ml.launch import DIE_WITH_PARENT_THEN_RUN

    (tmp_path / "sleeper.py").write_text(f"import os, time\nopen({str(tmp_path / 'pid')!r}, 'w').write("
                                         "str(os.getpid()))\ntime.sleep(60)\n")
    worker = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {DIE_WITH_PARENT_THEN_RUN!r}, "sleeper"], start_new_session=True)
time.sleep(60)
"""], env={**os.environ, "PYTHONPATH": str(tmp_path)})
    deadline = time.monotonic() + 20
    while not (tmp_path / "pid").is_file() or not (tmp_path / "pid").read_text():
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.05)
    launcher = int((tmp_path / "pid").read_text())
    worker.send_signal(signal.SIGKILL)
    worker.wait(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{launcher}/stat").read_text().split()[2] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(launcher, signal.SIGKILL)
    raise AssertionError("the launcher outlived its worker")


def test_a_launch_on_several_machines_needs_a_node_launcher():
    with pytest.raises(ValueError, match="node launcher"):
        LaunchConfig(machines=2)
    launch = LaunchConfig(machines=2, main_process_ip="10.0.0.5", node_launcher="ssh gpu{rank} 'cd /srv && {command}'")
    command = launch.command(Path("/shared/job"), machine_rank=0, port=29600)
    flag = {name: command[command.index(name) + 1] for name in
            ("--num_processes", "--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port")}
    assert flag == {"--num_processes": "2", "--num_machines": "2", "--machine_rank": "0",
                    "--main_process_ip": "10.0.0.5", "--main_process_port": "29600"}
    [other] = launch.node_commands(Path("/shared/job"), 29600)
    assert other.startswith("ssh gpu1 'cd /srv && ") and "--machine_rank 1" in other and "29600" in other
    assert launch.describe() == {"processes": 2, "machines": 2}


@pytest.mark.slow
def test_two_machines_on_localhost_publish_the_version_one_machine_does(tiny_model_dir, tmp_path):
    """Machine ranks 0 and 1 on this host (the node launcher runs the command here),
    one process each over gloo, train the same adapter as one machine with two
    processes: the same two ranks, the same shards of the same data."""
    import torch
    from safetensors.torch import load_file

    from training.ml.loading import PolicyStart
    from training.ml.methods import TrainingInputs, method_named

    method = method_named("sft_chosen")
    pairs = [PreferencePair(group=i, prompt=[{"role": "user", "content": f"say {word}"}], chosen=f"{word} {word}",
                            rejected="no") for i, word in enumerate(["alpha", "beta", "gamma", "delta"] * 4)]
    inputs = TrainingInputs(start=PolicyStart(tiny_model_dir), pairs=pairs)
    config = method.config({"batch_size": 4, "learning_rate": 1e-3})
    adapters = {}
    for name, launch in {"one machine": LaunchConfig(processes=2),
                         "two machines": LaunchConfig(machines=2, node_launcher="{command}")}.items():
        out = tmp_path / name.replace(" ", "-")
        result = launch.train_method(method, inputs, out, config)
        assert result.history, name
        adapters[name] = load_file(out / "adapter_model.safetensors")
        assert sorted(p.name for p in tmp_path.iterdir() if "launch" in p.name) == []  # folders removed
    one, two = adapters["one machine"], adapters["two machines"]
    assert one.keys() == two.keys() and one
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-6), key
