for round in 1 2; do
for repo in /work/before /work/main; do
  for case in recipe open; do
    (cd /tmp && python /tmp/refactor-bench/one.py $repo $case >> /tmp/refactor-bench/results.jsonl 2>> /tmp/refactor-bench/err.txt)
  done
done
done
echo done >> /tmp/refactor-bench/results.jsonl
