#!/bin/bash
# Container HEALTHCHECK: exit 0 when forqd's /healthz answers 200.
# Uses bash's /dev/tcp so the image needs no HTTP client package; the port
# comes from FORQ_HTTP_ADDR (default 8080).
port="${FORQ_HTTP_ADDR:-0.0.0.0:8080}"
port="${port##*:}"
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS=' ' read -r -t 3 _ code _ <&3 || exit 1
[ "$code" = 200 ]
