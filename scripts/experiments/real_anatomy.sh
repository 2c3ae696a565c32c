#!/usr/bin/env bash
# Real-anatomy benchmark: EAS U-Net and the paper's three baselines, trained side by side on MR-like images
# synthesised from real knee label maps (configs/train_from_labels.json), same data, split, loss, optimiser and
# schedule; then each is evaluated on the test subjects in both protocols (figures: python -m scripts.report).
#
#   bash scripts/experiments/real_anatomy.sh LABELS_DIR OUT_DIR [EPOCHS] [SLICES_PER_EPOCH] [SEED]
#
# LABELS_DIR holds the 48 OAI label maps (<id>_<visit>.nii.gz); the subject split is configs/splits/oai_labels.json.
# WORKERS (default 4) data-loader workers per model; the four models train concurrently on one GPU. SPLIT: another
# subject split file (e.g. configs/splits/oai_labels_cv6_fold3.json, one of six cross-validation folds); VAL:
# validation interval in epochs (default 4; the last epoch is validated in any case); EXTRA: more
# overrides for every run (e.g. tiny settings for a smoke test); CONFIGS: more config files for every run,
# comma-separated (e.g. configs/optim_adamw.json for a short budget); TRAIN_TIMEOUT: a wall-clock limit in seconds
# per training (it is stopped there and evaluated with its best validated checkpoint so far;
# EXTRA="--time_limit SECONDS" instead ends a training cleanly after the last epoch that fits, its state saved);
# EVAL_TIMEOUT: the same for each evaluation; NETS: the models to run (default: all four); STAGE: train, evaluate or
# all (default); RESUME=1: continue interrupted trainings from their last saved state (--resume True; train.log is
# appended to, not replaced).
set -euo pipefail
labels=$1
out=$2
epochs=${3:-24}
slices=${4:-4000}
seed=${5:-0}
workers=${WORKERS:-4}
CONFIGS=${CONFIGS:-}
read -r -a nets <<< "${NETS:-eas_unet unet unetplusplus attention_unet}"
common=(--dataset_dir "$labels" --split_file "${SPLIT:-configs/splits/oai_labels.json}" --seed "$seed" --num_workers "$workers" ${EXTRA:-})
resume=()
[ "${RESUME:-0}" = 1 ] && resume=(--resume True)

configs() {  # the config-file list of one model; $2 = the workflow override (train: none, evaluate: evaluate.json)
    local list="'configs/train.json','configs/train_from_labels.json'"
    [ "$1" != eas_unet ] && list="$list,'configs/networks/$1.json'"
    local extra
    for extra in ${CONFIGS//,/ }; do list="$list,'$extra'"; done
    [ -n "${2:-}" ] && list="$list,'$2'"
    echo "[$list]"
}

stage=${STAGE:-all}
mkdir -p "$out"
for net in "${nets[@]}"; do
    [ "$stage" = evaluate ] && break
    mkdir -p "$out/$net"
    [ "${RESUME:-0}" = 1 ] || : > "$out/$net/train.log"  # a fresh training starts a fresh log
    ${TRAIN_TIMEOUT:+timeout --signal=TERM "$TRAIN_TIMEOUT"} \
    python -m monai.bundle run --config_file "$(configs "$net")" "${common[@]}" --max_epochs "$epochs" \
        --slices_per_epoch "$slices" --val_interval "${VAL:-4}" --ckpt_dir "$out/$net/models" --output_dir "$out/$net" \
        "${resume[@]}" >> "$out/$net/train.log" 2>&1 &
done
wait || true  # a training stopped by TRAIN_TIMEOUT still has its best checkpoint; evaluation says if it has none
for net in "${nets[@]}"; do
    [ "$stage" = train ] && break
    ${EVAL_TIMEOUT:+timeout --signal=TERM "$EVAL_TIMEOUT"} \
    python -m monai.bundle run --config_file "$(configs "$net" configs/evaluate.json)" "${common[@]}" \
        --ckpt_dir "$out/$net/models" --output_dir "$out/$net" > "$out/$net/evaluate.log" 2>&1 &
done
wait
echo "done: $out"
