package main

import (
	"bufio"
	"fmt"
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
// devstack exits 0.
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
	waitForLine(t, out, "command-ready")
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("devstack after Ctrl-C: %v, want exit 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("devstack did not stop after Ctrl-C")
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
// prints.
func TestRunsFromAPrivateDirectory(t *testing.T) {
	private := t.TempDir() // mode 0700
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	pgPort, redisPort := freePorts(t)
	bin := buildDevstack(t, t.TempDir())
	cmd := exec.Command(bin, "-dir", filepath.Join(private, ".data"),
		"-pg-port", fmt.Sprint(pgPort), "-redis-port", fmt.Sprint(redisPort), "--", "sh", "-c", `pg_isready -d "$DATABASE_URL"`)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("devstack in a private directory: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "accepting connections") {
		t.Errorf("PostgreSQL did not answer:\n%s", out)
	}
	if os.Geteuid() == 0 && !strings.Contains(string(out), "cannot reach") {
		t.Errorf("running as root, devstack did not say where PostgreSQL's data went:\n%s", out)
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

func waitForLine(t *testing.T, r *bufio.Reader, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var seen []string
	for time.Now().Before(deadline) {
		line, err := r.ReadString('\n')
		seen = append(seen, line)
		if strings.Contains(line, want) {
			return
		}
		if err != nil {
			break
		}
	}
	t.Fatalf("no line %q; output:\n%s", want, strings.Join(seen, ""))
}
