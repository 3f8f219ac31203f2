"""Compare a learned schedule with the tuned baselines over paired seeds (or, with --baselines-only,
test the tuned baselines alone): the grid's best constant, step decay, cosine and linear schedules,
and the controller started from each initial LR it was trained on and from the tuned step decay's.

    python test.py --test-id <run id or folder> [--num-seeds 10] [--run-baselines]
    python test.py --test-id <run> --checkpoint last      # the controller where training ended
    python test.py --test-id <run> --policy sample        # actions drawn from the policy, not its mode
    python test.py --baselines-only --config configs/fa-mnist_cnn.json
    python test.py --replot results/fa-mnist_cnn/<run>     # redraw curves.png from summary.json
    python test.py --suite configs/generalist.json --test-id <run>   # the held-out tasks of an instance set

The code is alrs.commands.test, which the console script alrs-test runs too.
"""

from utils import run

if __name__ == "__main__":
    run("test")
