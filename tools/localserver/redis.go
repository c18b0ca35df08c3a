package localserver

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RedisOptions configure StartRedis.
type RedisOptions struct {
	// Dir holds the server's files and log; it is created if missing.
	Dir string
	// Port to listen on at 127.0.0.1; zero picks a free one.
	Port int
	// Persist keeps data across restarts (an append-only file in Dir).
	Persist bool
	// ReplicaOf, if set (host:port), makes the server a replica of that
	// master.
	ReplicaOf string
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
	if o.ReplicaOf != "" {
		host, port, err := net.SplitHostPort(o.ReplicaOf)
		if err != nil {
			return nil, fmt.Errorf("ReplicaOf %q: %w", o.ReplicaOf, err)
		}
		args = append(args, "--replicaof", host, port)
	}
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

// Kill ends the server at once (SIGKILL), as a crash would, and waits for
// it.
func (r *Redis) Kill() error {
	if r.proc.exited() {
		return nil
	}
	_ = r.proc.cmd.Process.Kill()
	<-r.proc.done
	return nil
}

// SentinelOptions configure StartSentinel.
type SentinelOptions struct {
	// Dir holds the sentinel's configuration file (which it rewrites) and
	// log; it is created if missing.
	Dir string
	// Master names the monitored master; MasterAddr is where it is now
	// (host:port).
	Master, MasterAddr string
	// Quorum is how many sentinels must agree that the master is down.
	Quorum int
	// DownAfter is how long the master may not answer before it is
	// thought down; FailoverTimeout bounds a failover. Zero: 1 s and 5 s.
	DownAfter, FailoverTimeout time.Duration
}

// Sentinel is a running redis-sentinel.
type Sentinel struct {
	proc *process
	port int
}

// StartSentinel starts redis-sentinel monitoring o.Master.
func StartSentinel(ctx context.Context, o SentinelOptions) (*Sentinel, error) {
	bin, err := exec.LookPath("redis-sentinel")
	if err != nil {
		bin, err = exec.LookPath("redis-server") // redis-server --sentinel is the same program
		if err != nil {
			return nil, fmt.Errorf("redis-sentinel not found on PATH; install it (Debian: apt-get install redis-sentinel)")
		}
	}
	if o.DownAfter == 0 {
		o.DownAfter = time.Second
	}
	if o.FailoverTimeout == 0 {
		o.FailoverTimeout = 5 * time.Second
	}
	host, masterPort, err := net.SplitHostPort(o.MasterAddr)
	if err != nil {
		return nil, fmt.Errorf("MasterAddr %q: %w", o.MasterAddr, err)
	}
	if err := (runAs{}).prepareDir(o.Dir); err != nil {
		return nil, err
	}
	start := func(port int) (*process, error) {
		conf := filepath.Join(o.Dir, "sentinel.conf")
		text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s %s %s %d\n"+
			"sentinel down-after-milliseconds %s %d\nsentinel failover-timeout %s %d\nsentinel parallel-syncs %s 1\n",
			port, o.Dir, o.Master, host, masterPort, o.Quorum,
			o.Master, o.DownAfter.Milliseconds(), o.Master, o.FailoverTimeout.Milliseconds(), o.Master)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return nil, err
		}
		cmd := exec.Command(bin, conf, "--sentinel")
		return startProcess(cmd, filepath.Join(o.Dir, "sentinel.log"), syscall.SIGTERM)
	}
	ready := func(ctx context.Context, port int) error { return (&Redis{port: port}).ping(ctx) }
	proc, port, err := startServer(ctx, "Redis Sentinel", 0, start, ready)
	if err != nil {
		return nil, err
	}
	return &Sentinel{proc: proc, port: port}, nil
}

// Addr returns host:port.
func (s *Sentinel) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Stop shuts the sentinel down and waits for it.
func (s *Sentinel) Stop() error { return s.proc.stop() }
