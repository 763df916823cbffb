#!/usr/bin/env bash
# The GPU recipe for the shipped ensemble: one H100/H200, bf16, 5 folds, larger upsampling and backbone.
# Meant for a session lent a device (see DEVELOPERS.md): it runs in the repository root there, with
# the data carried in the ignored folder data_carry/ (make it here first: tools/gpu_recipe.sh --carry).
#   bash tools/gpu_recipe.sh --carry          # here: copy the 28 px DermaMNIST folder (8 MB of JPEGs) into data_carry/
#   run: bash tools/gpu_recipe.sh             # on the device, carry=["data_carry"], timeout about 540 s
# Writes runs/gpu_cv5 (members, oof.csv, model.safetensors/.json, oof_report/); ship it with
#   python tools/ship_default_model.py --run runs/gpu_cv5
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--carry" ]; then
    mkdir -p data_carry/dermamnist28
    cp -r ../shared/data/dermamnist28/images ../shared/data/dermamnist28/HAM10000_metadata.csv data_carry/dermamnist28/
    du -sh data_carry
    exit 0
fi
test -x .venv/bin/python || make install >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
time .venv/bin/skinlesion train data_carry/dermamnist28 --folds 5 --out runs/gpu_cv5 \
    --backbone tf_efficientnet_lite2 --pretrained --input-size 160 --epochs 20 --patience 6 \
    --batch-size 256 --lr 2e-3 --weight-decay 0.02 --balance sqrt --seed 42 --num-workers 8 --no-progress
cat runs/gpu_cv5/oof_metrics.json | head -30
