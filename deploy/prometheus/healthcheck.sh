#!/bin/bash
# Container HEALTHCHECK: exit 0 when Prometheus's /-/ready answers 200
# (bash's /dev/tcp: the image needs no HTTP client package).
exec 3<>/dev/tcp/127.0.0.1/9090 || exit 1
printf 'GET /-/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS=' ' read -r -t 3 _ code _ <&3 || exit 1
[ "$code" = 200 ]
