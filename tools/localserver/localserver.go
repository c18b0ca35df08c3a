// Package localserver starts PostgreSQL and Redis servers from the binaries
// installed on this machine, listening on loopback only. Tests use it when
// neither server URLs nor a Docker engine are available, and `make run` uses
// it to give a development stack without Docker.
//
// Started as root, PostgreSQL runs as the "postgres" system user, since
// initdb and postgres refuse to run as root.
package localserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"
)

// startTimeout bounds how long a server may take to accept connections.
const startTimeout = 60 * time.Second

// process is a server started as a child process.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed
	log  string
	// stopSignal asks the server for a clean, fast shutdown.
	stopSignal syscall.Signal
}

func startProcess(cmd *exec.Cmd, logPath string, stopSignal syscall.Signal) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// If this process dies without stopping the server, the server goes too.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	// A process group of its own: a Ctrl-C in the terminal reaches the
	// program using the server, not the server, which is stopped after it.
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{}), log: logPath, stopSignal: stopSignal}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the server to shut down and waits for it, killing it if it
// takes longer than 15 seconds.
func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(p.stopSignal)
	select {
	case <-p.done:
		return nil
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop in 15s and was killed", filepath.Base(p.cmd.Path))
	}
}

// logTail returns the end of the server's log, for error messages.
func (p *process) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// startServer starts a server with start and waits until ready answers on
// its port, at most startTimeout. With fixedPort zero it picks a free port,
// and since another process may take that port between the choice and the
// start, it tries again on another, three times in all; a fixed port that
// is taken is an error. name is the server's, for messages ("PostgreSQL").
func startServer(ctx context.Context, name string, fixedPort int, start func(port int) (*process, error),
	ready func(ctx context.Context, port int) error) (*process, int, error) {
	for attempt := 1; ; attempt++ {
		port := fixedPort
		if port == 0 {
			var err error
			if port, err = FreePort(); err != nil {
				return nil, 0, err
			}
		} else if !PortFree(port) {
			return nil, 0, fmt.Errorf("port %d on 127.0.0.1 is taken; is another %s running?", port, name)
		}
		proc, err := start(port)
		if err != nil {
			return nil, 0, err
		}
		err = proc.waitReady(ctx, name, func(ctx context.Context) error { return ready(ctx, port) })
		if err == nil {
			return proc, port, nil
		}
		if fixedPort != 0 || attempt == 3 {
			return nil, 0, err
		}
	}
}

// waitReady polls ready until it succeeds, the process exits, or
// startTimeout passes (then it stops the process).
func (p *process) waitReady(ctx context.Context, name string, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited while starting (%v); its log says:\n%s", name, p.err, p.logTail())
		}
		select {
		case <-ctx.Done():
			_ = p.stop()
			return fmt.Errorf("%s did not accept connections in %s: %v; its log says:\n%s", name, startTimeout, err, p.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// FreePort returns a loopback TCP port that nothing listens on now.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// PortFree reports whether nothing listens on the loopback port.
func PortFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// FindBinary looks for a PostgreSQL program (postgres, pg_ctl, pgbench, …)
// on PATH, then in the directories that Debian and Ubuntu use (newest
// version first).
func FindBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	matches, _ := filepath.Glob(filepath.Join("/usr/lib/postgresql/*/bin", name))
	sort.Slice(matches, func(i, j int) bool { return pgVersion(matches[i]) > pgVersion(matches[j]) })
	if len(matches) > 0 {
		return matches[0], nil
	}
	return "", fmt.Errorf("%s not found on PATH or under /usr/lib/postgresql/*/bin; install the PostgreSQL server", name)
}

func pgVersion(binPath string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(binPath))))
	return v
}

// ErrDirUnreachable means PostgreSQL's account (postgres, when running as
// root) cannot reach the data directory through its parents.
var ErrDirUnreachable = errors.New("data directory unreachable")

// runAs describes the account a server runs under: the current one, or the
// postgres system user when the current one is root.
type runAs struct {
	cred     *syscall.Credential
	uid, gid int
}

func postgresAccount() (runAs, error) {
	if os.Geteuid() != 0 {
		return runAs{uid: os.Geteuid(), gid: os.Getegid()}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return runAs{}, errors.New("running as root, and initdb refuses root: a \"postgres\" system user is needed to run PostgreSQL")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return runAs{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid: uid, gid: gid}, nil
}

// command returns an exec.Cmd that runs as the account, with a clean
// locale so that initdb does not depend on the caller's.
func (a runAs) command(path string, args ...string) *exec.Cmd {
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	if a.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: a.cred}
	}
	return cmd
}

// prepareDir creates dir, private to the account, and any missing parents,
// open to traverse.
func (a runAs) prepareDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if a.cred == nil {
		return nil
	}
	if err := os.Chown(dir, a.uid, a.gid); err != nil {
		return err
	}
	// The account must be able to reach dir through its parents.
	probe := a.command("/bin/sh", "-c", `test -w "$1"`, "sh", dir)
	if err := probe.Run(); err != nil {
		return fmt.Errorf("%w: the postgres user cannot reach %s (a parent directory is private to root)", ErrDirUnreachable, dir)
	}
	return nil
}
