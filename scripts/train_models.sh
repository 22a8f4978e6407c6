#!/usr/bin/env bash
# Reproduce every shipped model, the modality gate and the cards' test metrics from ../shared/data.
# Runs one job at a time (a 2-core CPU); each job checkpoints into runs/, so a re-run with
# RESUME=1 continues where it stopped. Logs: runs/<task>/<name>/train.log.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
XRAY=$DATA/kermany_chest_xray_pneumonia
CT=$DATA/sars_cov2_ct
PY=${PY:-.venv/bin/python}
RESUME_FLAG=${RESUME:+--resume}
export TF_CPP_MIN_LOG_LEVEL=2

# Transfer learning: new head on the frozen ImageNet backbone, then the top 6 blocks fine-tuned
# (kept only if it beats the head on validation ROC-AUC within 3 epochs).
# All at 224 x 224: the X-ray images are 224 x 224, so larger native sizes add no detail.
for task in ct-covid xray-pneumonia; do
  if [ "$task" = ct-covid ]; then data=$CT; epochs=10; else data=$XRAY; epochs=6; fi
  for arch in efficientnet_lite0 efficientnet_lite1 efficientnet_lite2; do
    $PY -m lungviz train --data "$data" --task "$task" --arch "$arch" --head-epochs 30 \
      --epochs "$epochs" --finetune-blocks 6 --patience 3 $RESUME_FLAG
  done
  # The from-scratch baseline, at 128 x 128 to keep its CPU cost near the transfer models'.
  $PY -m lungviz train --data "$data" --task "$task" --arch simple_cnn --input-size 128 \
    --epochs 20 --patience 4 $RESUME_FLAG
  $PY -m lungviz evaluate --task "$task" --data "$data" --out "reports/$task" --update-cards
done
# The modality / out-of-distribution gate.
$PY -m lungviz gate fit --xray "$XRAY" --ct "$CT"
$PY -m lungviz gate evaluate --xray "$XRAY" --ct "$CT"
$PY -m lungviz cards --update-readme
