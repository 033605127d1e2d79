#!/usr/bin/env bash
# Hinton, Vinyals & Dean (2015), section 4, on LibriSpeech or the embedded
# synthetic corpus: GMM-HMM alignments -> baseline DNN -> teacher ensemble ->
# distilled students -> WER through an HCLG decoder, side by side.
#
#   recipes/librispeech/run.sh                                   # synthetic corpus, CPU config
#   recipes/librispeech/run.sh --corpus librispeech --config conf/librispeech_gpu.yaml --gpus 1
#   recipes/librispeech/run.sh --stage 6 --stop-stage 9          # only the DNN stages
#
# Options: --stage N --stop-stage M --corpus synthetic|librispeech --config FILE
#          --nj N (CPU processes) --gpus N (0: CPU) --corpus-dir DIR (an existing
#          LibriSpeech: skips the download) --force (redo finished stages)
# Every stage is skipped when its outputs are complete, so re-running resumes.
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=100
corpus=synthetic
config=
nj=2
gpus=0
corpus_dir=
force=

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage|--stop_stage) stop_stage=$2; shift 2 ;;
    --corpus) corpus=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --nj) nj=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --corpus-dir) corpus_dir=$2; shift 2 ;;
    --force) force=--force; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$corpus" in
  synthetic) : "${config:=conf/synthetic_cpu.yaml}" ;;
  librispeech) : "${config:=conf/librispeech_gpu.yaml}" ;;
  *) echo "run.sh: --corpus must be synthetic or librispeech" >&2; exit 2 ;;
esac
[ -f "$config" ] || { echo "run.sh: no config $config" >&2; exit 2; }
device=cpu; [ "$gpus" -gt 0 ] && device=cuda

get() { asrdistill config-get --config "$config" "$1"; }
log() { echo "$(date '+%F %T') run.sh: $*"; }
current="setup"
trap 'log "FAILED in $current (earlier stages'"'"' outputs are intact; fix and re-run with --stage)"' ERR
want() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
begin() { current="stage $1 ($2)"; t0=$SECONDS; log "Stage $1: $2"; }
end() { log "$current done in $((SECONDS - t0)) s"; }

train=$(get recipe.train_set)
dev=$(get recipe.dev_set)
test=$(get recipe.test_set)
subsets="$train $dev $test"
num_teachers=$(get recipe.num_teachers)
temperatures=$(get recipe.temperatures)
fraction=$(get recipe.fraction)
teachers="baseline"; for i in $(seq 2 "$num_teachers"); do teachers="$teachers teacher_$i"; done
common="--config $config --device $device"

if want 0; then begin 0 "corpus ($corpus)"
  if [ "$corpus" = synthetic ]; then
    asrdistill synth-corpus --out data/corpus --hours "$(get recipe.hours)" --seed "$(get recipe.corpus_seed)" \
      --num-speakers "$(get recipe.num_speakers)" --lm-sentences "$(get recipe.lm_sentences)" --nj "$nj"
  elif [ -n "$corpus_dir" ]; then
    mkdir -p data && ln -sfn "$(realpath "$corpus_dir")" data/corpus
  else
    asrdistill download --target data/corpus --subsets $(get recipe.corpus_subsets)
  fi
end; fi

if want 1; then begin 1 "Kaldi data dirs and lang"
  asrdistill prepare --corpus data/corpus --subsets $(get recipe.corpus_subsets) --out data --nj "$nj" $force
  asrdistill lang --config "$config" --out data/lang data/$train data/$dev data/$test \
    --extra-text $(ls data/corpus/lm/lm-text.txt data/corpus/lm/librispeech-vocab.txt 2>/dev/null || true)
end; fi

if want 2; then begin 2 "fbank features and CMVN"
  for s in $subsets; do
    asrdistill features --config "$config" --nj "$nj" $force data/$s data/fbank/$s
  done
  asrdistill cmvn data/fbank/$train
end; fi

if want 3; then begin 3 "monophone GMM-HMM (flat start) and alignment"
  asrdistill mono --config "$config" --device $device --nj "$nj" data/$train data/lang data/fbank/$train exp/mono
end; fi

if want 4; then begin 4 "decision tree, tied-state triphones, senone labels"
  asrdistill tri --config "$config" --device $device --nj "$nj" data/$train data/lang data/fbank/$train exp/mono exp/tri
  asrdistill align --config "$config" --device $device --nj "$nj" --prior-ali exp/mono/ali exp/tri data/$train data/lang data/fbank/$train exp/tri_ali/$train
  for s in $dev $test; do
    asrdistill align --config "$config" --device $device --nj "$nj" exp/tri data/$s data/lang data/fbank/$s exp/tri_ali/$s
  done
end; fi

if want 5; then begin 5 "language model and HCLG graph"
  asrdistill lm --config "$config" data/corpus/lm data/lang data/$dev data/$test exp/lm
  asrdistill graph --config "$config" data/lang exp/tri exp/lm exp/graph
end; fi

data="--feats data/fbank --labels exp/tri_ali --train-set $train --dev-set $dev"

if want 6; then begin 6 "baseline DNN on hard labels"
  asrdistill train $common $data --seed 1 --out exp/baseline
end; fi

if want 7; then begin 7 "teachers 2..$num_teachers (same recipe, other seeds; the baseline is teacher 1)"
  for i in $(seq 2 "$num_teachers"); do
    asrdistill train $common $data --seed "$i" --out exp/teacher_$i
  done
end; fi

if want 8; then begin 8 "ensemble: posteriors averaged, top-k soft targets cached"
  asrdistill ensemble $common $data --out exp/ensemble --temperatures $temperatures --members \
    $(for t in $teachers; do echo exp/$t; done)
end; fi

if want 9; then begin 9 "students: T in {$temperatures} compared on dev, then the best T trained longer"
  for t in $temperatures; do
    asrdistill train $common $data --role student --seed 101 --soft exp/ensemble/soft_T$t --temperature "$t" \
      --out exp/student_T$t
  done
  best_t=$(asrdistill best-temperature exp/student_T*)
  asrdistill train $common $data --role student_final --seed 101 --soft exp/ensemble/soft_T$best_t \
    --temperature "$best_t" --out exp/student
end; fi

if want 10; then begin 10 "section 6: $fraction of the training data, hard labels vs soft targets"
  best_t=$(asrdistill best-temperature exp/student_T*)
  asrdistill train $common $data --role fraction --seed 201 --fraction "$fraction" --out exp/fraction_hard
  asrdistill train $common $data --role fraction --seed 201 --fraction "$fraction" \
    --soft exp/ensemble/soft_T$best_t --temperature "$best_t" --out exp/fraction_soft
end; fi

systems="$teachers ensemble $(for t in $temperatures; do echo student_T$t; done) student fraction_hard fraction_soft"

if want 11; then begin 11 "decode and score every system"
  for sys in $systems; do
    asrdistill evaluate $common $data --nj "$nj" --test-set $test --graph exp/graph --data data exp/$sys
  done
  for sys in $systems; do  # what `asrdistill decode --model exp/<system>/bundle` loads
    asrdistill bundle --config "$config" $force exp/$sys exp/$sys/bundle --feats data/fbank/$train \
      --labels exp/tri_ali/$train --tree exp/tri --graph exp/graph --lang data/lang
  done
end; fi

if want 12; then begin 12 "results"
  asrdistill results exp $systems
end; fi
log "all requested stages done"
