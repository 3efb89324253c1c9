M=${MODELS:-models-full-b6}
for case in "fp32:--precision fp32" "banded-switch:--precision banded --band-switch" "banded-kept:--precision banded"; do
  name=${case%%:*}; args=${case#*:}
  /usr/bin/time -f "$name %e s wall, %U+%S s CPU, %M KB peak" python -m imgdiff_onnx run --models $M \
    --input benchmarks/results/band_inside/pairs8.jsonl --params benchmarks/results/band_inside/params.yaml \
    --output benchmarks/results/band_switch/out8-$name.jsonl --overwrite $args 2>> benchmarks/results/band_switch/log.txt
done
echo done8 >> benchmarks/results/band_switch/log.txt
