#!/bin/bash
cd /work/main
rm -rf /tmp/prof-run
.venv/bin/python -m epp bench --routers epp-default --workloads no-sharing --rates 12 --repeats 1 --no-overhead --run-dir /tmp/prof-run --out /tmp/prof-out > /tmp/prof-bench.log 2>&1 &
B=$!
for i in $(seq 1 300); do
  P=$(pgrep -f "epp serve --grpc-port" | head -1)
  [ -n "$P" ] && break
  sleep 0.1
done
HP=$(tr '\0' ' ' < /proc/$P/cmdline | sed 's/.*--health-port \([0-9]*\).*/\1/')
for i in $(seq 1 300); do
  curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:$HP/healthz 2>/dev/null | grep -q 200 && break
  curl -s -o /dev/null http://127.0.0.1:$HP/ 2>/dev/null && break
  sleep 0.1
done
echo "epp pid $P health $HP ready after $i"
/tmp/spyenv/bin/py-spy record -p $P -d 10 -r 250 -f raw -o /tmp/prof.txt --nonblocking > /tmp/spy.log 2>&1
wait $B
