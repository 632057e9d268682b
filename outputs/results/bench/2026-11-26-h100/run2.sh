python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=offline
timeout 40 python3 .gpu/err.py > $OUT/errors.txt 2>&1
timeout 110 python3 -m pytest -q -p no:cacheprovider -p no:benchmark -n 12 -v --tb=short --timeout 60 tests/test_gpu.py -k "not True" > $OUT/pytest2.txt 2>&1
grep -E "FAILED|Error|error" $OUT/pytest2.txt | head -40; cat $OUT/errors.txt
