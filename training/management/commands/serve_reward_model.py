from __future__ import annotations

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from training.ml.loading import configure_torch_threads
from training.ml.reward_server import RewardServerConfig
from training.services.reward_server import RewardServerError, reward_server


def version_argument(value: str) -> int | None:
    if value == "latest":
        return None
    if not value.isdigit():
        raise ValueError(value)
    return int(value)


class Command(BaseCommand):
    help = ("Serve a run's reward model over HTTP in this process, for trainers outside PrefLoop: POST /v1/rewards "
            "(chat messages) and POST /get_reward (OpenRLHF's remote reward model), behind researchers' API tokens. "
            "With --version latest (the default) it switches to each new version the run publishes.")

    def create_parser(self, prog_name, subcommand, **kwargs):
        # --version is the reward model's here, as issue 31 names it, not Django's own
        # "print Django's version"; argparse lets the later definition win.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        defaults = RewardServerConfig()
        parser.add_argument("--run", required=True, help="the run's name")
        parser.add_argument("--version", type=version_argument, default=None, metavar="N|latest",
                            help="a reward model version number, or latest (default): follow the newest")
        parser.add_argument("--host", default=defaults.host, help=f"address to listen on (default {defaults.host})")
        parser.add_argument("--port", type=int, default=defaults.port, help=f"default {defaults.port}")
        parser.add_argument("--max-batch", type=int, default=defaults.max_batch,
                            help="answers scored in one forward pass at most")
        parser.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms,
                            help="how long a request waits for others to join its batch")
        parser.add_argument("--poll-seconds", type=float, default=defaults.poll_seconds,
                            help="how often --version latest asks for the newest version")
        parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                            help="the model's precision (default: the run's, auto: bf16 on a recent GPU, fp32 on CPU)")

    def handle(self, *args, run: str, version: int | None, host: str, port: int, max_batch: int,
               batch_wait_ms: float, poll_seconds: float, precision: str | None, **options):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        configure_torch_threads(settings.PREFLOOP_TORCH_THREADS)
        config = RewardServerConfig(host=host, port=port, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                                    poll_seconds=poll_seconds)
        try:
            server = reward_server(run, version, config, precision=precision or self.run_precision(run))
        except RewardServerError as error:
            raise CommandError(str(error)) from None
        except OSError as error:  # the port is taken, say
            raise CommandError(f"cannot listen on {host}:{port}: {error}") from None
        server.start()
        served = server.loaded.version
        self.stdout.write(self.style.SUCCESS(
            f"Serving reward model v{served.number} of run {served.run!r} at {server.url} "
            f"({'following the newest version' if version is None else 'pinned'}). Ctrl-C stops it."))
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        server.stop()

    def run_precision(self, name: str) -> str | None:
        from training.models import Run

        found = Run.objects.filter(name=name).values_list("precision", flat=True).first()
        return found or None
