"""The cream_tf command line; installed also as `cream-tf` (see cream_tf/cli.py for the modes).

python main.py --mode=search
"""

from cream_tf.cli import run

if __name__ == "__main__":
    run()
