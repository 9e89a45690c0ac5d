#!/usr/bin/env bash
# On the GPU machine: writes a random 1.3B checkpoint in fla's layout to ${1:-/tmp/m13} (fla's
# default MesaNetConfig, tools/fla/make_goldens.py's builder), unless it is there already.
# Needs fla's wheels in .whl/ (carried along). Used by the serving checks on the 1.3B.
set -u
DIR=${1:-/tmp/m13}
[ -f "$DIR/config.json" ] && exit 0
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null
DIR=$DIR PYTHONPATH=/tmp/site:tools/fla python3 - <<'PY' 2>&1 | grep -v Warn | tail -3
import os
import make_goldens as mg
d = os.environ['DIR']
config, model = mg.build_model({}, 'cpu', 7, False)
os.makedirs(d, exist_ok=True)
mg.write_config(config, os.path.join(d, 'config.json'))
mg.save_weights(mg.state_to_save(model, config), d, 1)
print('wrote', d + ':', sum(p.numel() for p in model.parameters()) / 1e9, 'B parameters')
PY
