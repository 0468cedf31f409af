from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from labeling.oracles import ORACLES
from labeling.simulation import simulate_labels


class Command(BaseCommand):
    help = "Label queued comparisons with a scripted oracle (marked as simulated)."

    def add_arguments(self, parser):
        parser.add_argument("--oracle", required=True, help=f"{', '.join(ORACLES)} or keyword:WORD")
        parser.add_argument("--noise", type=float, default=0.1, help="share of random answers (default 0.1)")
        parser.add_argument("--n", type=int, default=100, help="how many comparisons to label at most")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, oracle: str, noise: float, n: int, seed: int, **options):
        try:
            labeled = simulate_labels(oracle, noise, n, seed)
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(self.style.SUCCESS(f"{oracle} labeled {labeled} comparisons (noise {noise:g})."))
