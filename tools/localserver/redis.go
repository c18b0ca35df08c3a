package localserver

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// RedisOptions configure StartRedis.
type RedisOptions struct {
	// Dir holds the server's files and log; it is created if missing.
	Dir string
	// Port to listen on at 127.0.0.1; zero picks a free one.
	Port int
	// Persist keeps data across restarts (an append-only file in Dir).
	Persist bool
}

// Redis is a running Redis server.
type Redis struct {
	proc *process
	port int
}

// StartRedis starts redis-server.
func StartRedis(ctx context.Context, o RedisOptions) (*Redis, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH; install it (Debian: apt-get install redis-server)")
	}
	acct := runAs{}
	if err := acct.prepareDir(o.Dir); err != nil {
		return nil, err
	}
	appendOnly := "no"
	if o.Persist {
		appendOnly = "yes"
	}
	args := []string{"--bind", "127.0.0.1", "--dir", o.Dir, "--daemonize", "no", "--save", "", "--appendonly", appendOnly}
	start := func(port int) (*process, error) {
		cmd := exec.Command(bin, append([]string{"--port", strconv.Itoa(port)}, args...)...)
		return startProcess(cmd, filepath.Join(o.Dir, "redis.log"), syscall.SIGTERM)
	}
	ready := func(ctx context.Context, port int) error { return (&Redis{port: port}).ping(ctx) }
	proc, port, err := startServer(ctx, "Redis", o.Port, start, ready)
	if err != nil {
		return nil, err
	}
	return &Redis{proc: proc, port: port}, nil
}

// ping sends PING and expects PONG.
func (r *Redis) ping(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", r.Addr())
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// Addr returns host:port.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// Port returns the port it listens on.
func (r *Redis) Port() int { return r.port }

// URL returns a redis:// URL for database db.
func (r *Redis) URL(db int) string { return fmt.Sprintf("redis://%s/%d", r.Addr(), db) }

// Stop shuts the server down and waits for it.
func (r *Redis) Stop() error { return r.proc.stop() }
