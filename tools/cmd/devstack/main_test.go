package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segments-service/segments/tools/localserver"
)

// buildDevstack builds this command into dir.
func buildDevstack(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "devstack")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// freePorts returns two free loopback ports.
func freePorts(t *testing.T) (int, int) {
	t.Helper()
	a, err1 := localserver.FreePort()
	b, err2 := localserver.FreePort()
	if err1 != nil || err2 != nil || a == b {
		t.Fatalf("free ports: %d %d %v %v", a, b, err1, err2)
	}
	return a, b
}

// startInGroup starts devstack in a process group of its own, as a shell
// runs a foreground job, and returns it with its output's first line.
func startInGroup(t *testing.T, bin string, args ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	return cmd, bufio.NewReader(out)
}

// TestCtrlCStopsTheCommandThenTheServers sends SIGINT to devstack's whole
// process group, as Ctrl-C in a terminal does: the command stops first,
// with PostgreSQL still answering while it does, then the servers, and
// devstack exits 0. It says where the data is as it starts, and that the
// servers stopped and the data is kept as it ends.
func TestCtrlCStopsTheCommandThenTheServers(t *testing.T) {
	dir := filepath.Join(testDir(t), "data")
	pgPort, redisPort := freePorts(t)
	result := filepath.Join(testDir(t), "seen-on-interrupt")
	// The command, on its interrupt, waits a moment and asks whether
	// PostgreSQL still answers.
	script := fmt.Sprintf(`trap 'sleep 1; pg_isready -q -d "$DATABASE_URL" && echo up > %s || echo down > %s; exit 0' INT TERM
echo command-ready; while :; do sleep 0.1; done`, result, result)
	cmd, out := startInGroup(t, buildDevstack(t, t.TempDir()), "-dir", dir,
		"-pg-port", fmt.Sprint(pgPort), "-redis-port", fmt.Sprint(redisPort), "--", "sh", "-c", script)
	started := waitForLine(t, out, "command-ready")
	for _, want := range []string{
		fmt.Sprintf("PostgreSQL on 127.0.0.1:%d (data in %s)", pgPort, filepath.Join(dir, "postgres")),
		fmt.Sprintf("Redis on 127.0.0.1:%d (data in %s)", redisPort, filepath.Join(dir, "redis")),
	} {
		if !strings.Contains(started, want) {
			t.Errorf("devstack did not say %q as it started:\n%s", want, started)
		}
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var stopped []byte
	done := make(chan error, 1)
	go func() {
		stopped, _ = io.ReadAll(out) // before Wait, which closes the pipe
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("devstack after Ctrl-C: %v, want exit 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("devstack did not stop after Ctrl-C")
	}
	if want := "devstack: stopped PostgreSQL and Redis; data kept in " + dir + " (make reset DATA_DIR=" + dir + " deletes it)"; !strings.Contains(string(stopped), want) {
		t.Errorf("after Ctrl-C, devstack did not say %q:\n%s", want, stopped)
	}
	seen, _ := os.ReadFile(result)
	if strings.TrimSpace(string(seen)) != "up" {
		t.Errorf("while the command stopped, PostgreSQL was %q, want up", strings.TrimSpace(string(seen)))
	}
	if localserver.PortFree(pgPort) != true || localserver.PortFree(redisPort) != true {
		t.Error("a server still listens after devstack exited")
	}
}

// TestRunsFromAPrivateDirectory runs devstack with its data under a
// directory only the current user can enter (a clone under /root, or a
// mktemp -d): as root, PostgreSQL runs as the postgres user, which cannot
// reach it, so its data goes to a directory it can reach, which devstack
// prints as it starts and as it ends.
func TestRunsFromAPrivateDirectory(t *testing.T) {
	private := t.TempDir() // mode 0700
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	pgPort, redisPort := freePorts(t)
	bin := buildDevstack(t, t.TempDir())
	data := filepath.Join(private, ".data")
	cmd := exec.Command(bin, "-dir", data,
		"-pg-port", fmt.Sprint(pgPort), "-redis-port", fmt.Sprint(redisPort), "--", "sh", "-c", `pg_isready -d "$DATABASE_URL"`)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("devstack in a private directory: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "accepting connections") {
		t.Errorf("PostgreSQL did not answer:\n%s", out)
	}
	pgData, kept := filepath.Join(data, "postgres"), data
	if os.Geteuid() == 0 {
		if !strings.Contains(string(out), "cannot reach") {
			t.Errorf("running as root, devstack did not say why PostgreSQL's data went elsewhere:\n%s", out)
		}
		pgData = filepath.Join(reachableDir(data), "postgres")
		kept = data + " and " + pgData
	}
	for _, want := range []string{
		fmt.Sprintf("PostgreSQL on 127.0.0.1:%d (data in %s)", pgPort, pgData),
		fmt.Sprintf("Redis on 127.0.0.1:%d (data in %s)", redisPort, filepath.Join(data, "redis")),
		"stopped PostgreSQL and Redis; data kept in " + kept + " (make reset DATA_DIR=" + data + " deletes it)",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("devstack did not say %q:\n%s", want, out)
		}
	}
	// Reset forgets the data, wherever it went.
	reset := exec.Command(bin, "-dir", filepath.Join(private, ".data"), "-reset")
	if out, err := reset.CombinedOutput(); err != nil {
		t.Fatalf("reset: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(private, ".data")); !os.IsNotExist(err) {
		t.Errorf("the data directory is still there after reset: %v", err)
	}
}

// TestATakenPortSaysHowToFreeIt starts devstack on a port something else
// listens on: it fails at once, saying what may hold the port and how to
// choose another.
func TestATakenPortSaysHowToFreeIt(t *testing.T) {
	bin := buildDevstack(t, t.TempDir())
	for _, tc := range []struct {
		server string
		want   []string
	}{
		{"PostgreSQL", []string{"a packaged PostgreSQL? `systemctl stop postgresql`", "or choose another: make run PG_PORT="}},
		{"Redis", []string{"a packaged Redis? `systemctl stop redis-server`", "or choose another: make run REDIS_PORT="}},
	} {
		t.Run(tc.server, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			taken := ln.Addr().(*net.TCPAddr).Port
			free, err := localserver.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			pgPort, redisPort := taken, free
			if tc.server == "Redis" {
				pgPort, redisPort = free, taken
			}
			data := filepath.Join(testDir(t), "data")
			out, err := exec.Command(bin, "-dir", data, "-pg-port", fmt.Sprint(pgPort), "-redis-port", fmt.Sprint(redisPort),
				"--", "true").CombinedOutput()
			if err == nil {
				t.Fatalf("devstack on a taken port exited 0:\n%s", out)
			}
			want := append([]string{fmt.Sprintf("devstack: port %d on 127.0.0.1 is taken", taken)}, tc.want...)
			for _, w := range want {
				if !strings.Contains(string(out), w) {
					t.Errorf("devstack did not say %q:\n%s", w, out)
				}
			}
			if _, err := os.Stat(data); !os.IsNotExist(err) {
				t.Errorf("devstack started something before finding the port taken: %s exists (%v)", data, err)
			}
		})
	}
}

// testDir returns a directory for a server's data that the postgres user
// can reach (t.TempDir is private to the current user).
func testDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "devstack-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// waitForLine reads r until a line contains want and returns what it read.
func waitForLine(t *testing.T, r *bufio.Reader, want string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var seen []string
	for time.Now().Before(deadline) {
		line, err := r.ReadString('\n')
		seen = append(seen, line)
		if strings.Contains(line, want) {
			return strings.Join(seen, "")
		}
		if err != nil {
			break
		}
	}
	t.Fatalf("no line %q; output:\n%s", want, strings.Join(seen, ""))
	return ""
}
