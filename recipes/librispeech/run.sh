#!/usr/bin/env bash
# Hinton, Vinyals & Dean (2015), section 4, on LibriSpeech or the embedded
# synthetic corpus: GMM-HMM alignments -> baseline DNN -> teacher ensemble ->
# distilled students -> (optional, section 5: specialists) -> WER through an
# HCLG decoder, side by side.
#
#   recipes/librispeech/run.sh                                   # synthetic corpus, CPU config
#   recipes/librispeech/run.sh --corpus librispeech --config recipes/librispeech/conf/librispeech_gpu.yaml --gpus 1
#   recipes/librispeech/run.sh --stage 6 --stop-stage 9          # only the DNN stages
#   recipes/librispeech/run.sh --stage 6 --gpus 8 --nnodes 2 --node-rank 0 --master-addr node0   # + rank 1 on node1
#
# Options: --stage N --stop-stage M --corpus synthetic|librispeech --config FILE
#          --nj N (CPU processes; also the jobs stages 7, 9, 10 and 12 run at once) --gpus N (GPUs per node;
#          0: CPU; N > 1: torchrun DDP)
#          --nnodes N --node-rank R --master-addr HOST --master-port P (multi-node DDP)
#          --corpus-dir DIR (an existing LibriSpeech: links it, fetches only the lexicon and LMs)
#          --lexicon FILE (own lexicon) --lm-dir DIR (OpenSLR 11 files already here)
#          --force (redo every finished stage in range) --force-stage N (redo stage N only; repeatable)
# Every stage is skipped when its outputs are complete and their inputs and
# config unchanged, so re-running resumes. Relative --config, --corpus-dir,
# --lexicon and --lm-dir paths are taken from the directory run.sh is called from.
set -euo pipefail
script=$(realpath "$0")
caller=$PWD
cd "$(dirname "$script")"

stage=0
stop_stage=100
corpus=synthetic
config=
nj=2
gpus=0
nnodes=1
node_rank=0
master_addr=127.0.0.1
master_port=29500
corpus_dir=
force_all=
force_stages=" "
lexicon=
lm_dir=

while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage|--stop_stage) stop_stage=$2; shift 2 ;;
    --corpus) corpus=$2; shift 2 ;;
    --config) config=$(cd "$caller" && realpath -m -- "$2"); shift 2 ;;
    --nj) nj=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --nnodes) nnodes=$2; shift 2 ;;
    --node-rank) node_rank=$2; shift 2 ;;
    --master-addr) master_addr=$2; shift 2 ;;
    --master-port) master_port=$2; shift 2 ;;
    --corpus-dir) corpus_dir=$(cd "$caller" && realpath -m -- "$2"); shift 2 ;;
    --lexicon) lexicon=$(cd "$caller" && realpath -m -- "$2"); shift 2 ;;
    --lm-dir) lm_dir=$(cd "$caller" && realpath -m -- "$2"); shift 2 ;;
    --force) force_all=--force; shift ;;
    --force-stage|--force_stage) force_stages="$force_stages$2 "; shift 2 ;;
    -h|--help) sed -n "2,$(grep -n '^set -euo' "$script" | cut -d: -f1)p" "$script" | sed '$d'; exit 0 ;;
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
device=${ASRDISTILL_DEVICE:-$device}  # ASRDISTILL_DEVICE=cpu: the --gpus N ranks on CPU (gloo), for tests
# DNN trainings (stages 6, 7, 9, 10, 11): one process, or torchrun DDP over --gpus N per node x --nnodes
train_cmd="asrdistill train"
if [ "$gpus" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
  rendezvous="--standalone"
  [ "$nnodes" -gt 1 ] && rendezvous="--nnodes $nnodes --node-rank $node_rank --master-addr $master_addr --master-port $master_port"
  train_cmd="torchrun --nproc-per-node $(( gpus > 0 ? gpus : 1 )) $rendezvous -m asrdistill.cli train"
fi

get() { asrdistill config-get --config "$config" "$1"; }
log() { echo "$(date '+%F %T') run.sh: $*"; }
current="setup"
trap 'log "FAILED in $current (earlier stages'"'"' outputs are intact; fix and re-run with --stage)"' ERR
want() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
begin() {  # sets $force for the stage's commands
  current="stage $1 ($2)"; t0=$SECONDS; log "Stage $1: $2"
  force=$force_all; case "$force_stages" in *" $1 "*) force=--force ;; esac
}
end() { log "$current done in $((SECONDS - t0)) s"; }

# Independent command lines (stages 7, 9, 10 and 12) run through `asrdistill run-jobs`: `run_jobs NAME N`
# writes the asrdistill command lines on its stdin (without 'asrdistill') to exp/jobs/NAME.txt, each with
# --threads (this machine's cores shared among the jobs that run at once, so that two trainings do not
# each take every core), and runs at most N at a time on the config's executor (local processes, or the
# Dask workers of its 'executor' section; there executor.workers, if set, is how many run at once). Each
# command skips the work it finished, so a rerun redoes only the unfinished jobs; every failing job is
# named in the log and the stage fails once the others are done.
cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
run_jobs() {
  local file=exp/jobs/$1.txt line lines=() at_once threads
  while IFS= read -r line; do if [ -n "${line// /}" ]; then lines+=("$line"); fi; done
  mkdir -p exp/jobs
  at_once=$(( $2 < ${#lines[@]} ? $2 : ${#lines[@]} ))
  if [ "$at_once" -lt 1 ]; then : > "$file"; log "$1: no jobs"; return 0; fi
  threads=$(( cores / at_once > 1 ? cores / at_once : 1 ))
  printf "%s --threads $threads\n" "${lines[@]}" > "$file"
  log "$1: ${#lines[@]} job(s) in $file, $at_once at a time, $threads torch thread(s) each"
  asrdistill run-jobs --config "$config" --nj "$at_once" "$file" || return
}
# Trainings (`train ...` lines): through run_jobs, --nj at a time on the CPU and one at a time on a GPU
# (side by side they would compete for its memory). Under torchrun (--gpus > 1 or --nnodes > 1) the lines
# of exp/jobs/NAME.txt run one after another here, as before: run-jobs starts `python -m asrdistill.cli`,
# not torchrun, and DDP runs side by side would share the same GPUs and, across nodes, the rendezvous port.
train_jobs() {
  if [ "$train_cmd" = "asrdistill train" ]; then
    run_jobs "$1" "$([ "$device" = cpu ] && echo "$nj" || echo 1)" || return
  else
    local file=exp/jobs/$1.txt line
    mkdir -p exp/jobs
    sed '/^ *$/d' > "$file"
    while IFS= read -r line <&3; do
      $train_cmd ${line#train } || return
    done 3< "$file"
  fi
}

train=$(get recipe.train_set)
dev=$(get recipe.dev_set)
test=$(get recipe.test_set)
subsets="$train $dev $test"
augment=$(get augment.enabled 2>/dev/null || echo False)   # optional (config augment.enabled): perturbed copies
dnn_train=$train; if [ "$augment" = True ]; then dnn_train=${train}_sp; fi   # the DNNs' training set (stages 6-12)
shift_set=$(get recipe.shift_set 2>/dev/null || true)  # optional voice-shift test set: test_shift (synthetic) or
# test_other (LibriSpeech, listed in corpus_subsets); decoded with every system's bundle in stage 12
num_teachers=$(get recipe.num_teachers)      # baselines with seeds 1..N, which are also the ensemble's members
student_seeds=$(get recipe.student_seeds)
temperatures=$(get recipe.temperatures)
hard_weights=$(get recipe.hard_weights)      # the first is swept with every T, the others at the best T
fraction=$(get recipe.fraction)
baselines=$(for i in $(seq 1 "$num_teachers"); do echo "baseline_seed$i"; done)
students=$(for i in $(seq 1 "$student_seeds"); do echo "student_seed$i"; done)
common="--config $config --device $device"

if want 0; then begin 0 "corpus ($corpus)"
  if [ "$corpus" = synthetic ]; then
    asrdistill synth-corpus --out data/corpus --hours "$(get recipe.hours)" --seed "$(get recipe.corpus_seed)" \
      --num-speakers "$(get recipe.num_speakers)" --lm-sentences "$(get recipe.lm_sentences)" --nj "$nj" $force \
      --dev-fraction "$(get recipe.dev_fraction)" --test-fraction "$(get recipe.test_fraction)" \
      --vocab-size "$(get recipe.vocab_size 2>/dev/null || echo 0)"   # optional: extra words (synthetic_large.yaml)
    if [ "$shift_set" = test_shift ]; then asrdistill synth-shift-set --corpus data/corpus --nj "$nj" $force; fi
  else
    arpa=$(get lm.official_arpa 2>/dev/null || true)   # only the ARPA decoded with, not all ~4 GB of OpenSLR 11
    asrdistill download --target data/corpus --subsets $(get recipe.corpus_subsets) ${arpa:+--lm-files "$arpa"} \
      ${corpus_dir:+--corpus-dir "$corpus_dir"} ${lexicon:+--lexicon "$lexicon"} ${lm_dir:+--lm-dir "$lm_dir"}
  fi
end; fi

if want 1; then begin 1 "Kaldi data dirs and lang"
  asrdistill prepare --corpus data/corpus --subsets $(get recipe.corpus_subsets) \
    $([ "$shift_set" = test_shift ] && echo test_shift) --out data --nj "$nj" $force
  case "$corpus" in synthetic) extra_text=data/corpus/lm/lm-text.txt ;; *) extra_text=data/corpus/lm/librispeech-vocab.txt ;; esac
  asrdistill lang --config "$config" --out data/lang data/$train data/$dev data/$test --extra-text $extra_text
end; fi

if want 2; then begin 2 "fbank features and CMVN"
  for s in $subsets; do
    asrdistill features --config "$config" --nj "$nj" $force data/$s data/fbank/$s
  done
  asrdistill cmvn data/fbank/$train
end; fi

if want 3; then begin 3 "monophone GMM-HMM (flat start) and alignment"
  asrdistill mono --config "$config" --device $device --nj "$nj" $force data/$train data/lang data/fbank/$train exp/mono
end; fi

if want 4; then begin 4 "decision tree, tied-state triphones, senone labels"
  asrdistill tri --config "$config" --device $device --nj "$nj" $force data/$train data/lang data/fbank/$train exp/mono exp/tri
  asrdistill align --config "$config" --device $device --nj "$nj" $force exp/tri data/$train data/lang data/fbank/$train exp/tri_ali/$train
  for s in $dev $test; do
    asrdistill align --config "$config" --device $device --nj "$nj" $force exp/tri data/$s data/lang data/fbank/$s exp/tri_ali/$s
  done
  if [ "$augment" = True ]; then  # Kaldi's sp recipe: the copies are aligned by the GMM-HMM trained on the original data
    asrdistill augment-data-dir --config "$config" --nj "$nj" $force data/$train data/$dnn_train
    asrdistill features --config "$config" --nj "$nj" $force data/$dnn_train data/fbank/$dnn_train
    asrdistill cmvn data/fbank/$dnn_train
    asrdistill align --config "$config" --device $device --nj "$nj" $force exp/tri data/$dnn_train data/lang \
      data/fbank/$dnn_train exp/tri_ali/$dnn_train
  fi
end; fi

if want 5; then begin 5 "language model and HCLG graph"
  asrdistill lm --config "$config" data/corpus/lm data/lang data/$dev data/$test exp/lm
  asrdistill graph --config "$config" data/lang exp/tri exp/lm exp/graph
end; fi

data="--feats data/fbank --labels exp/tri_ali --train-set $dnn_train --dev-set $dev"

# Every DNN (baselines, students, fraction runs) is trained under one stopping rule, the 'train'
# section's (maximum epochs, newbob halving and stop, patience), all chosen on dev. An epoch of a
# fraction run repeats its subset up to a full epoch's frames, so the rule allows it as many updates.
if want 6; then begin 6 "baseline DNN on hard labels (seed 1)"
  $train_cmd $common $data $force --seed 1 --out exp/baseline_seed1
end; fi

if want 7; then begin 7 "baselines with seeds 2..$num_teachers (the ensemble's other members)"
  train_jobs stage7 < <(for i in $(seq 2 "$num_teachers"); do
    echo "train $common $data $force --seed $i --out exp/baseline_seed$i"
  done)
end; fi

if want 8; then begin 8 "ensemble: posteriors averaged, soft-target fidelity on dev, soft targets cached"
  asrdistill ensemble $common $data $force --out exp/ensemble --temperatures $temperatures --members \
    $(for b in $baselines; do echo exp/$b; done)
end; fi

# sweep runs record kind 'sweep' (train.kind), so the results table tells them from the students by their own
# metadata, whatever their folders are called
sweep_dir() { echo "exp/sweep_T$1_hw$2"; }
independent_seed=$((num_teachers + 1))
# One temperature and one hard weight in the config: the students' setting is fixed there (the README run takes
# it from the documented ablation, docs/ablation_student.md), and no sweep is trained. Several: the sweep of
# stage 9 chooses on dev.
fixed_setting=$([ "$(wc -w <<< "$temperatures")" -eq 1 ] && [ "$(wc -w <<< "$hard_weights")" -eq 1 ] && echo yes || true)
chosen_setting() {  # prints "T hard_weight" of the students
  if [ -n "$fixed_setting" ]; then echo "$temperatures $hard_weights"; else asrdistill best-student exp/sweep_T*; fi
}
setting_source="chosen on dev (seed 100)"; if [ -n "$fixed_setting" ]; then setting_source="fixed by the config"; fi
if want 9; then begin 9 "students: $student_seeds seeds at the (T, hard weight) $setting_source"
  hw0=${hard_weights%% *}
  # an independent baseline (seed N+1, no ensemble member), the fair reference for how often a single model
  # agrees with the ensemble; measured against the ensemble each epoch like the students
  independent="train $common $data $force --seed $independent_seed --set train.kind=independent_baseline"
  independent="$independent --set train.reference=exp/ensemble --out exp/independent_baseline"
  if [ -z "$fixed_setting" ]; then
    train_jobs stage9_sweep_T < <(for t in $temperatures; do
      echo "train $common $data $force --role student --set train.kind=sweep --seed 100 --soft exp/ensemble/soft_T$t" \
        "--temperature $t --hard-weight $hw0 --out $(sweep_dir "$t" "$hw0")"
    done
    echo "$independent")
    read -r best_t _ < <(asrdistill best-student exp/sweep_T*_hw$hw0)
    train_jobs stage9_sweep_hw < <(for hw in ${hard_weights#"$hw0"}; do
      echo "train $common $data $force --role student --set train.kind=sweep --seed 100" \
        "--soft exp/ensemble/soft_T$best_t --temperature $best_t --hard-weight $hw --out $(sweep_dir "$best_t" "$hw")"
    done)
  fi
  read -r best_t best_hw < <(chosen_setting)
  train_jobs stage9_students < <(for i in $(seq 1 "$student_seeds"); do
    echo "train $common $data $force --role student --seed $((100 + i)) --soft exp/ensemble/soft_T$best_t" \
      "--temperature $best_t --hard-weight $best_hw --out exp/student_seed$i"
  done
  if [ -n "$fixed_setting" ]; then echo "$independent"; fi)  # beside the students: no sweep to run it with
end; fi

if want 10; then begin 10 "section 6: $fraction of the training data, hard labels vs soft targets"
  read -r best_t best_hw < <(chosen_setting)
  train_jobs stage10 < <(
    echo "train $common $data $force --role fraction --seed 201 --fraction $fraction --out exp/fraction_hard"
    echo "train $common $data $force --role fraction --seed 201 --fraction $fraction --soft exp/ensemble/soft_T$best_t" \
      "--temperature $best_t --hard-weight $best_hw --out exp/fraction_soft")
end; fi

# Optional (config specialists.enabled, off unless set): the paper's section 5 specialists on the
# seed-1 baseline as generalist, and one student distilled from generalist + specialists at the
# students' dev-chosen (T, hard weight). Both are systems of stages 12 and 13 like every other.
specialists=$(get specialists.enabled 2>/dev/null || echo False)
if want 11; then
  if [ "$specialists" = True ]; then begin 11 "specialists for confusable senones, and a student distilled from them"
    spec="--generalist exp/baseline_seed1 --out exp/specialists"
    asrdistill specialists-groups $common $data $force $spec --tree exp/tri/tree.json --lang data/lang
    asrdistill specialists-train $common $data $force $spec
    asrdistill specialists-eval $common $data $spec --test-set $test
    read -r best_t best_hw < <(chosen_setting)
    asrdistill specialists-cache $common $data $force $spec --temperatures "$best_t"
    $train_cmd $common $data $force --role student --seed 101 --soft exp/specialists/soft_T$best_t \
      --temperature "$best_t" --hard-weight "$best_hw" --out exp/student_from_specialists
  end; else log "Stage 11: specialists skipped (specialists.enabled is not true in $config)"; fi
fi

# Optional (config compression.enabled, off unless set; conf/synthetic_compression.yaml): stage 14, the ensemble
# distilled into smaller students beside same-size hard-label twins (compression.sh), rows of the results' own table
compression=$(get compression.enabled 2>/dev/null || echo False)
if [ "$compression" = True ]; then source compression.sh; fi  # compression_stage, compression_systems
results() {  # stages 13 and 14: the table of every system evaluated so far
  asrdistill results exp $systems $([ "$compression" != True ] || compression_systems) \
    $(cd exp && ls -d sweep_T* 2>/dev/null)
}

systems="$baselines ensemble independent_baseline $students"
if [ "$specialists" = True ]; then systems="$systems specialists student_from_specialists"; fi
systems="$systems fraction_hard fraction_soft"

if want 12; then begin 12 "decode and score every system; frame accuracy of the sweep"
  # every evaluation is independent (the ensemble's needs only its members' weights): --nj at a time, each
  # system decoding with --nj / (systems at once) processes, so that about --nj decoders run in all
  num_systems=$(wc -w <<< "$systems")
  decode_nj=$(( nj / (num_systems < nj ? num_systems : nj) )); [ "$decode_nj" -ge 1 ] || decode_nj=1
  run_jobs stage12_evaluate "$nj" < <(
    for sys in $systems; do
      echo "evaluate $common $data $force --nj $decode_nj --test-set $test --graph exp/graph --data data exp/$sys"
    done
    for sweep in $(cd exp && ls -d sweep_T* 2>/dev/null); do  # none when the config fixes (T, hard weight)
      echo "evaluate $common $data $force --test-set $test --data data exp/$sweep"
    done)
  # what `asrdistill decode --model exp/<system>/bundle` loads (its acoustic scale from the evaluation's metrics);
  # a bundle holds plain DNNs, so generalist+specialists (exp/specialists) has none
  run_jobs stage12_bundle "$nj" < <(for sys in $systems; do
    if [ "$sys" != specialists ]; then
      echo "bundle --config $config $force exp/$sys exp/$sys/bundle --feats data/fbank/$dnn_train" \
        "--labels exp/tri_ali/$dnn_train --tree exp/tri --graph exp/graph --lang data/lang"
    fi
  done)
  if [ -n "$shift_set" ]; then  # the voice-shift set, decoded as a user would: each system's bundle (WER only)
    run_jobs stage12_shift "$nj" < <(for sys in $systems; do
      if [ "$sys" != specialists ]; then
        echo "decode --model exp/$sys/bundle --corpus data/$shift_set --out exp/$sys/decode_$shift_set --nj $decode_nj"
      fi
    done)
  fi
end; fi

if want 13; then begin 13 "results"
  results
end; fi

if want 14; then
  if [ "$compression" = True ]; then begin 14 "compression: students of $(get compression.sizes) beside hard twins"
    compression_stage
    results
  end; else log "Stage 14: compression sweep skipped (compression.enabled is not true in $config)"; fi
fi
log "all requested stages done"
