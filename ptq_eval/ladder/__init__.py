"""Reference ladders: small models trained offline at controlled N and D, from a YAML config.

- `config.py`: the config (architecture, sizes, ratios, schedule, corpora, tokenizer, seed) and the presets;
- `architectures.py`: the GPT-NeoX or Llama model of one size;
- `schedules.py`: where each checkpoint falls in its run (WSD cooldown branches, cosine snapshots);
- `train.py`: the training runs, the saved checkpoints and `ladder.json` (import it from there: it loads the
  modelling code, which the other files and the command line's start-up do without);
- `table.py`: a trained ladder's checkpoints as a table.
"""

from ptq_eval.ladder.config import LadderConfig, ModelSize, load_ladder_config, parse_ladder_config, preset
from ptq_eval.ladder.schedules import plan_targets
from ptq_eval.ladder.table import local_ladder_table

__all__ = [
    "LadderConfig", "ModelSize", "load_ladder_config", "local_ladder_table", "parse_ladder_config", "plan_targets",
    "preset",
]  # fmt: skip
