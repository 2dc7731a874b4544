#!/usr/bin/env bash
# Run deploy/nginx/fer_async.conf in the foreground without root or /etc: everything (config,
# pid, logs, temp files) under PREFIX, listening on 127.0.0.1:LISTEN_PORT in front of replicas
# on 127.0.0.1:UPSTREAM_PORT... (for trying it, benchmarking it, and its test).
#
#   deploy/nginx/run-local.sh /tmp/fer-nginx 8090 8081 8082
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 PREFIX LISTEN_PORT UPSTREAM_PORT [UPSTREAM_PORT...]" >&2
  exit 2
fi
prefix=$(realpath -m "$1"); listen=$2; shift 2
here=$(dirname "$(realpath "$0")")
nginx=$(command -v nginx || echo /usr/sbin/nginx)
mkdir -p "$prefix"/{client_body,proxy,fastcgi,uwsgi,scgi}

# The shipped site config with our listen address and replicas (the example server lines go).
servers=""
for port in "$@"; do servers+="    server 127.0.0.1:${port} max_fails=1 fail_timeout=10s;\n"; done
awk -v servers="$servers" -v listen="$listen" '
  /^[[:space:]]*server 127\.0\.0\.1:[0-9]+/ { if (!done) { printf "%s", servers; done = 1 } next }
  /^[[:space:]]*listen 80;$/ { print "    listen 127.0.0.1:" listen ";"; next }
  { print }
' "$here/fer_async.conf" > "$prefix/fer_async.conf"

# As root, nginx's workers would switch to "nobody", who may not enter PREFIX.
user=""
if [ "$(id -u)" = 0 ]; then user="user $(id -un) $(id -gn);"; fi
cat > "$prefix/nginx.conf" <<CONF
daemon off;
worker_processes 1;
$user
pid $prefix/nginx.pid;
error_log $prefix/error.log info;
events { worker_connections 1024; }
http {
    access_log $prefix/access.log;
    client_body_temp_path $prefix/client_body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
    include $prefix/fer_async.conf;
}
CONF
"$nginx" -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/error.log" -t -q
exec "$nginx" -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/error.log"
