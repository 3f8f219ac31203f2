"""Learn an adaptive learning-rate schedule: train a PPO controller on the LR environment.

python train.py --config configs/quick.json          # or: alrs-train --config configs/quick.json
python train.py --dataset fa-mnist --architecture cnn --episodes 1000
python train.py --resume runs/<id>
python train.py --config configs/generalist.json     # one controller across an instance set of tasks

The code is alrs.commands.train, which the console script alrs-train runs too.
"""

from utils import run

if __name__ == "__main__":
    run("train")
