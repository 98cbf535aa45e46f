#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft: broker and controller in one process) on loopback,
# for tests and local clusters. The jars come from Maven Central through pom.xml beside this
# script; Java 17 or newer runs them.
#
#   testbeds/kafka/kafka.sh start     fetch the jars if needed, format storage once, start,
#                                     wait until the broker accepts connections; prints the
#                                     bootstrap address
#   testbeds/kafka/kafka.sh stop      stop it cleanly (SIGTERM, then SIGKILL after 30 s)
#   testbeds/kafka/kafka.sh restart   stop, then start on the same storage and port
#   testbeds/kafka/kafka.sh status    exit 0 if it runs
#   testbeds/kafka/kafka.sh wipe      stop and delete its storage
#
# Environment: KAFKA_PORT (default 19092), KAFKA_CONTROLLER_PORT (default 19093),
# KAFKA_DIR (state: jars, storage, log, pid; default testbeds/.run/kafka), KAFKA_SECURITY.
#
# KAFKA_SECURITY=sasl_ssl starts a broker that takes no client without TLS: KAFKA_PORT is a
# SASL_SSL listener (SCRAM-SHA-256 and SCRAM-SHA-512) and KAFKA_SSL_PORT (default 19094) an SSL
# listener that requires a client certificate, which the broker also uses for its own
# connections; the controller listener stays plaintext on loopback. On first start it makes,
# under $KAFKA_DIR/tls (mode 0700): a CA (ca.pem), the broker's certificate for 127.0.0.1 and
# localhost, a client certificate (client.pem, client.key) for the SSL listener, and the
# password of the SCRAM user KAFKA_SCRAM_USER (default "switchyard") in scram.password, whose
# credentials are written into the storage when it is formatted. `wipe` deletes them too.
# The default, KAFKA_SECURITY=plaintext, is one PLAINTEXT listener on KAFKA_PORT.
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd -- "$here/../.." && pwd)"
dir="${KAFKA_DIR:-$root/testbeds/.run/kafka}"
port="${KAFKA_PORT:-19092}"
controller_port="${KAFKA_CONTROLLER_PORT:-19093}"
lib="$dir/lib"
data="$dir/data"
pidfile="$dir/broker.pid"
logfile="$dir/broker.log"
props="$dir/server.properties"
security="${KAFKA_SECURITY:-plaintext}"
ssl_port="${KAFKA_SSL_PORT:-19094}"
tls="$dir/tls"
scram_user="${KAFKA_SCRAM_USER:-switchyard}"
case "$security" in
  plaintext | sasl_ssl) ;;
  *) printf 'kafka: KAFKA_SECURITY must be plaintext or sasl_ssl, not %s\n' "$security" >&2; exit 2 ;;
esac

log() { printf 'kafka: %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing $2 with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
  command -v "$1" >/dev/null 2>&1 || { log "$1 is needed: install $2"; exit 1; }
}

fetch() {
  local stamp="$lib/.pom.sha256" want
  want="$(sha256sum "$here/pom.xml" | cut -d' ' -f1)"
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return 0
  need java default-jre-headless
  need mvn maven
  log "fetching the Kafka jars from Maven Central into $lib"
  rm -rf "$lib" && mkdir -p "$lib"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$lib" >&2
  printf '%s\n' "$want" >"$stamp"
}

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# The TLS material and the SCRAM password of the sasl_ssl mode, made once per state directory.
# Keys are P-256 (quick to make); certificates last 30 days, far beyond a test run.
make_tls() {
  [[ -f "$tls/broker.p12" ]] && return 0
  need openssl openssl
  log "making a CA, broker and client certificates and a SCRAM password in $tls"
  rm -rf "$tls" && mkdir -p "$tls" && chmod 700 "$tls"
  (
    umask 077
    cd "$tls"
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 30 \
      -subj "/CN=Switchyard test Kafka CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    sign() { # name, subject, extended key usage, subject alternative names (or empty)
      openssl req "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf 'extendedKeyUsage=%s\n' "$3" >"$1.ext"
      if [[ -n "$4" ]]; then printf 'subjectAltName=%s\n' "$4" >>"$1.ext"; fi
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" \
        -days 30 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign broker "/CN=127.0.0.1" serverAuth,clientAuth "IP:127.0.0.1,DNS:localhost"
    sign client "/CN=switchyard-gateway" clientAuth ""
    openssl rand -hex 16 >broker.p12.password
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -passout "file:broker.p12.password" -out broker.p12
    openssl rand -hex 24 >scram.password
  )
}

listeners_config() {
  if [[ "$security" == plaintext ]]; then
    cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
PROPS
    return 0
  fi
  local p12_password
  p12_password="$(cat "$tls/broker.p12.password")"
  cat <<PROPS
listeners=SASL_SSL://127.0.0.1:$port,SSL://127.0.0.1:$ssl_port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=SASL_SSL://127.0.0.1:$port,SSL://127.0.0.1:$ssl_port
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SSL
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.ssl.ssl.client.auth=required
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$p12_password
ssl.key.password=$p12_password
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
ssl.endpoint.identification.algorithm=https
PROPS
}

write_config() {
  mkdir -p "$dir"
  [[ "$security" == plaintext ]] || make_tls
  (umask 077 && cat >"$props") <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
$(listeners_config)
log.dirs=$data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Flushing is left to the OS, as in production; acks=all with one replica means "written".
PROPS
  cat >"$dir/log4j2.properties" <<'LOG'
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.server.name = org.apache.kafka.server
logger.server.level = INFO
LOG
}

java_run() {
  java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$lib/*" "$@"
}

format() {
  if [[ -f "$data/meta.properties" ]]; then
    # SCRAM users are written at format time: storage formatted in another mode lacks them.
    local formatted
    formatted="$(cat "$dir/data.security" 2>/dev/null || echo plaintext)"
    if [[ "$formatted" != "$security" ]]; then
      log "the storage in $data was formatted for KAFKA_SECURITY=$formatted; run \`$0 wipe\` first"
      exit 1
    fi
    return 0
  fi
  log "formatting storage in $data"
  mkdir -p "$data"
  local cluster_id
  cluster_id="$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
  local scram=()
  if [[ "$security" == sasl_ssl ]]; then
    # On the command line for the few seconds the format takes: a test broker's password.
    local password
    password="$(cat "$tls/scram.password")"
    for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
      scram+=(--add-scram "$mechanism=[name=$scram_user,password=$password]")
    done
  fi
  java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$props" "${scram[@]}" >&2
  printf '%s\n' "$security" >"$dir/data.security"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  if running; then
    log "already running (pid $(cat "$pidfile"))"
    echo "127.0.0.1:$port"
    return 0
  fi
  fetch
  write_config
  format
  log "starting the broker on 127.0.0.1:$port (log: $logfile)"
  nohup java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$lib/*" \
    kafka.Kafka "$props" >>"$logfile" 2>&1 &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 90))
  until port_open && grep -q "Kafka Server started\|KafkaRaftServer.*started\|started (kafka.server" "$logfile"; do
    if ! running; then
      log "the broker exited; the end of its log:"
      tail -n 30 "$logfile" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "the broker did not start within 90 s; the end of its log:"
      tail -n 30 "$logfile" >&2
      stop
      exit 1
    fi
    sleep 0.2
  done
  log "ready"
  echo "127.0.0.1:$port"
}

stop() {
  running || { rm -f "$pidfile"; return 0; }
  local pid
  pid="$(cat "$pidfile")"
  log "stopping the broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      log "not stopped after 30 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) running ;;
  wipe) stop; rm -rf "$data" "$dir/data.security" "$logfile" "$tls" ;;
  *) echo "usage: $0 start|stop|restart|status|wipe" >&2; exit 2 ;;
esac
