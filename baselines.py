"""Grid-search the paper's step-decay baseline (48 points), constant LRs, cosine and linear decays, and
the peers (Schedule-Free AdamW, Prodigy, Adam with an EMA of its weights), resumably.

python baselines.py --dataset fa-mnist --architecture cnn
python baselines.py --config configs/quick.json

The code is alrs.commands.baselines, which the console script alrs-baselines runs too.
"""

from utils import run

if __name__ == "__main__":
    run("baselines")
