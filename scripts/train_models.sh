#!/usr/bin/env bash
# Reproduce every shipped model, the modality gate and the cards' metrics from ../shared/data.
# Runs one job at a time (a 2-core CPU); each job checkpoints into runs/final/, so a re-run with
# RESUME=1 continues where it stopped. Logs: runs/final/<task>/<name>/train.log.
# Needs the training extra (pip install -e .[training]) and the nsfwjs package (make nsfwjs).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
KERMANY=$DATA/kermany_chest_xray_pneumonia
NIH=$DATA/nih_chestxray14_pneumonia
SARS=$DATA/sars_cov2_ct
QU_EX=$DATA/covid_qu_ex_infection
PY=${PY:-.venv/bin/python}
RESUME_FLAG=${RESUME:+--resume}
export TF_CPP_MIN_LOG_LEVEL=2

# X-ray trains on the pediatric and the adult source together; CT has one labelled source.
XRAY=(--task xray-pneumonia --data "$KERMANY" --data "$NIH")
CT=(--task ct-covid --data "$SARS")
train() { local name=$1; shift; $PY -m lungviz train "$@" --run-dir "runs/final/$name" $RESUME_FLAG; }

# Transfer learning on lung crops: a new head on the frozen pretrained backbone (features computed
# once), then the top blocks fine-tuned with augmentation, kept only if they beat the head on
# validation ROC-AUC. Heavier backbones fine-tune fewer blocks for fewer epochs (CPU budget);
# VGG16 runs at 160 x 160 and ships its head on the frozen backbone.
train xray-pneumonia/efficientnet-lite0 "${XRAY[@]}" --arch efficientnet_lite0 --head-epochs 30 --epochs 4 --finetune-blocks 6 --patience 2
train ct-covid/efficientnet-lite0 "${CT[@]}" --arch efficientnet_lite0 --head-epochs 30 --epochs 8 --finetune-blocks 6 --patience 3
train xray-pneumonia/simple-cnn "${XRAY[@]}" --arch simple_cnn --input-size 128 --epochs 16 --patience 4
train ct-covid/simple-cnn "${CT[@]}" --arch simple_cnn --input-size 128 --epochs 20 --patience 4
train xray-pneumonia/mobilenetv2 "${XRAY[@]}" --arch mobilenetv2 --head-epochs 30 --epochs 3 --finetune-blocks 4 --patience 2
train ct-covid/mobilenetv2 "${CT[@]}" --arch mobilenetv2 --head-epochs 30 --epochs 6 --finetune-blocks 4 --patience 3
train xray-pneumonia/inceptionv3 "${XRAY[@]}" --arch inceptionv3 --head-epochs 30 --epochs 2 --finetune-blocks 1 --patience 1
train ct-covid/inceptionv3 "${CT[@]}" --arch inceptionv3 --head-epochs 30 --epochs 3 --finetune-blocks 1 --patience 2
train xray-pneumonia/vgg16 "${XRAY[@]}" --arch vgg16 --input-size 160 --head-epochs 30 --epochs 0
train ct-covid/vgg16 "${CT[@]}" --arch vgg16 --input-size 160 --head-epochs 30 --epochs 0

# Each X-ray model's CAM layer is the candidate whose Grad-CAM maps point at COVID-QU-Ex infections
# most often (never a classifier's test split); then the localisation scores of every method.
$PY -m lungviz localisation --qu-ex "$QU_EX" --nih "$NIH" --methods gradcam,layercam --limit 200 \
  --choose-cam-layer --update-cards
# Do the maps depend on the model? The randomisation sanity check of each method, per model.
$PY -m lungviz randomisation "${XRAY[@]}" --methods gradcam,gradcam++,layercam --images 6 --update-cards
$PY -m lungviz randomisation "${CT[@]}" --methods gradcam,gradcam++,layercam --images 6 --update-cards
# Test metrics pooled, per source and per view, written into the cards.
$PY -m lungviz evaluate "${XRAY[@]}" --out reports/xray-pneumonia --update-cards
$PY -m lungviz evaluate "${CT[@]}" --out reports/ct-covid --update-cards

# The modality / out-of-distribution gate, on every source.
CT_DICOM=$($PY -c 'import pydicom.data; print(pydicom.data.get_testdata_file("CT_small.dcm"))')
GATE=(--xray "$KERMANY" --xray "$NIH" --ct "$SARS" --ct "$CT_DICOM" --cache runs/gate-cache)
$PY -m lungviz gate fit "${GATE[@]}"
$PY -m lungviz gate evaluate "${GATE[@]}"
$PY -m lungviz gate evaluate --leave-one-source-out "${GATE[@]}"
$PY -m lungviz cards --update-readme
