# Optional stage of run.sh (config compression.enabled; conf/synthetic_compression.yaml turns it on): the
# ensemble distilled into students smaller than its members, each beside a hard-label twin of its size, so that
# the results' "Compression" table (asrdistill/results_compression.py) shows what each size costs and keeps.
#
# For every size LxW of compression.sizes (L hidden layers of W units) and seed 1..compression.seeds:
#   exp/compress_LxW_student_seed<i>  distilled at the students' (T, hard weight) (run.sh chosen_setting)
#   exp/compress_LxW_hard_seed<i>     hard labels; the same seed (300 + i: same initialisation and data order)
# both under the 'train' section's stopping rule like every other DNN, and both evaluated on dev and test (WER too
# with compression.decode) by `asrdistill evaluate`, whose timing of the network is the table's cost column; each
# student also gets its bundle (exp/compress_LxW_student_seed<i>/bundle), ready for `asrdistill export-bundle`.
#
# Sourced by run.sh (after stage 9, which it needs: the ensemble's soft targets and the sweep), it defines
# compression_systems and compression_stage and uses run.sh's get, train_jobs, run_jobs, log and $config,
# $common, $data, $force, $nj, $train, $test. compression_train_lines prints the trainings without running them
# (a dry run; tests/test_compression.py parses them):
#   config=conf/synthetic_compression.yaml; get() { asrdistill config-get --config "$config" "$1"; }
#   source compression.sh; common="--config $config" data="..." force= compression_train_lines 2 0.333

# "LAYERS WIDTH" per line for each of compression.sizes; a size not written LAYERSxWIDTH is an error naming it
compression_sizes() {
  local sizes size
  read -ra sizes <<< "$(get compression.sizes)" || return  # no glob: '2*32' is reported, not expanded
  for size in "${sizes[@]}"; do
    if [[ ! $size =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]]; then
      echo "compression.sh: $config: compression.sizes: '$size' is not LAYERSxWIDTH (e.g. 2x64)" >&2
      return 2
    fi
    echo "${size%x*} ${size#*x}"
  done
}

# compression.seeds, checked: a positive count
compression_seeds() {
  local seeds
  seeds=$(get compression.seeds) || return
  if [[ ! $seeds =~ ^[1-9][0-9]*$ ]]; then
    echo "compression.sh: $config: compression.seeds: '$seeds' is not a positive count" >&2
    return 2
  fi
  echo "$seeds"
}

# the folders the stage trains (students and hard twins, every size and seed): for the evaluation and results lines
compression_systems() {
  local sizes seeds layers width i kind
  sizes=$(compression_sizes) && seeds=$(compression_seeds) || return
  while read -r layers width; do
    for i in $(seq 1 "$seeds"); do
      for kind in student hard; do echo "compress_${layers}x${width}_${kind}_seed$i"; done
    done
  done <<< "$sizes"
}

# `train ...` lines (run.sh's train_jobs format) of every size and seed, the students at temperature $1, hard weight $2
compression_train_lines() {
  local sizes seeds layers width i size
  sizes=$(compression_sizes) && seeds=$(compression_seeds) || return
  while read -r layers width; do
    size="--set train.model.hidden_layers=$layers --set train.model.hidden_dim=$width"
    for i in $(seq 1 "$seeds"); do
      echo "train $common $data $force --role student --set train.kind=compression_student $size" \
        "--seed $((300 + i)) --soft exp/ensemble/soft_T$1 --temperature $1 --hard-weight $2" \
        "--out exp/compress_${layers}x${width}_student_seed$i"
      echo "train $common $data $force --set train.kind=compression_hard $size --seed $((300 + i))" \
        "--out exp/compress_${layers}x${width}_hard_seed$i"
    done
  done <<< "$sizes"
}

compression_stage() {
  local best_t best_hw systems graph=
  systems=$(compression_systems) || return
  read -r best_t best_hw < <(chosen_setting)  # run.sh: the config's fixed (T, hard weight) or the sweep's best
  log "compression: $(wc -w <<< "$systems") trainings at T=$best_t, hard weight $best_hw for the students"
  train_jobs compression_train < <(compression_train_lines "$best_t" "$best_hw")
  if [ "$(get compression.decode)" = True ]; then graph="--nj 1 --graph exp/graph"; fi
  # --nj at a time, each with one torch thread (not run_jobs' share of the cores): the table's cost column is the
  # network's time on one CPU thread
  mkdir -p exp/jobs
  for sys in $systems; do
    echo "evaluate $common $data $force --test-set $test --data data $graph --threads 1 exp/$sys"
  done > exp/jobs/compression_evaluate.txt
  log "compression_evaluate: $(wc -w <<< "$systems") job(s) in exp/jobs/compression_evaluate.txt, $nj at a time"
  asrdistill run-jobs --config "$config" --nj "$nj" exp/jobs/compression_evaluate.txt
  # the students' bundles, as stage 12 writes the other systems': what `asrdistill export-bundle --int8` ships
  run_jobs compression_bundle "$nj" < <(for sys in $systems; do
    case "$sys" in *_student_*)
      echo "bundle --config $config $force exp/$sys exp/$sys/bundle --feats data/fbank/$train" \
        "--labels exp/tri_ali/$train --tree exp/tri --graph exp/graph --lang data/lang" ;;
    esac
  done)
}
