package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests in this file cover cluster runs: `cairn backup --config`,
// `cairn status` and `snapshots --run` (docs/cluster.md).

var clusterHex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// runStatus is `cairn status --json`, as cluster.md describes it.
type runStatus struct {
	ID         string  `json:"id"`
	Cluster    string  `json:"cluster"`
	Phase      string  `json:"phase"`
	Started    string  `json:"started"`
	Finished   *string `json:"finished"`
	Components []struct {
		Name       string  `json:"name"`
		Node       *string `json:"node"`
		Kind       string  `json:"kind"`
		Phase      string  `json:"phase"`
		SnapshotID *string `json:"snapshot_id"`
		Bytes      int64   `json:"bytes"`
		Duration   float64 `json:"duration_seconds"`
		Error      *string `json:"error"`
	} `json:"components"`
}

func (e *Env) status(args ...string) runStatus {
	e.t.Helper()
	r := e.Must(append([]string{"status", "--json"}, args...)...)
	var st runStatus
	if err := json.Unmarshal([]byte(r.Stdout), &st); err != nil {
		e.t.Fatalf("status --json: %v\n%s", err, r.Stdout)
	}
	return st
}

// component returns the index of component name in st.
func (st runStatus) component(t *testing.T, name string) int {
	t.Helper()
	for i, c := range st.Components {
		if c.Name == name {
			return i
		}
	}
	t.Fatalf("run %s has no component %s: %+v", st.ID, name, st)
	return -1
}

// clusterSources writes two directories for files components and returns
// their paths.
func clusterSources(t *testing.T, e *Env) (a, b string) {
	t.Helper()
	a, b = filepath.Join(e.Dir, "etc-app"), filepath.Join(e.Dir, "var-app")
	WriteFile(t, filepath.Join(a, "app.conf"), []byte("listen 8080\n"))
	WriteFile(t, filepath.Join(a, "sub", "users.conf"), []byte("alice\nbob\n"))
	WriteFile(t, filepath.Join(b, "data.db"), bytes.Repeat([]byte("row\n"), 5000))
	WriteFile(t, filepath.Join(b, "cache", "junk.tmp"), []byte("junk"))
	return a, b
}

// writeConfig writes a cluster file and returns its path.
func writeConfig(t *testing.T, e *Env, text string) string {
	t.Helper()
	name := filepath.Join(e.Dir, "cluster.yaml")
	WriteFile(t, name, []byte(text))
	return name
}

// threeComponents is a cluster of two files components and a command
// component, with a post hook that leaves a marker holding the run's result.
func threeComponents(t *testing.T, e *Env, exitCode int) (config, marker string) {
	t.Helper()
	a, b := clusterSources(t, e)
	marker = filepath.Join(e.Dir, "resumed")
	return writeConfig(t, e, fmt.Sprintf(`cluster: prod
hooks:
  pre: [["echo", "pausing writers"]]
  post: [["sh", "-c", "echo $CAIRN_RESULT > %s"]]
  timeout: 30s
components:
  - name: config
    kind: files
    paths: [%s]
  - name: data
    kind: files
    paths: [%s]
    exclude: ["*.tmp"]
  - name: grid-caches
    kind: command
    backup: ["sh", "-c", "printf 'cache-a\ncache-b\n'; exit %d"]
`, marker, a, b, exitCode)), marker
}

func readMarker(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("the post hook left no marker: %v", err)
	}
	return strings.TrimSpace(string(b))
}

func TestClusterBackup(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	config, marker := threeComponents(t, e, 0)

	r := e.Must("backup", "--config", config, "--node", "node1")
	if !strings.Contains(r.Stderr, "[run pre echo] pausing writers") {
		t.Errorf("the run log has no prefixed output of the pre hook:\n%s", r.Stderr)
	}
	if got := readMarker(t, marker); got != "completed" {
		t.Errorf("post hook saw result %q, want completed", got)
	}

	st := e.status("latest")
	if st.Phase != "completed" || st.Cluster != "prod" || st.Finished == nil {
		t.Fatalf("run: %+v", st)
	}
	if len(st.Components) != 3 {
		t.Fatalf("%d components, want 3: %+v", len(st.Components), st)
	}
	ids := map[string]string{}
	for _, c := range st.Components {
		if c.Phase != "completed" || c.SnapshotID == nil || !clusterHex64.MatchString(*c.SnapshotID) || c.Error != nil {
			t.Errorf("component %s: phase %s, snapshot %v, error %v", c.Name, c.Phase, c.SnapshotID, c.Error)
			continue
		}
		if c.Node == nil || *c.Node != "node1" || c.Bytes <= 0 {
			t.Errorf("component %s: node %v, bytes %d", c.Name, c.Node, c.Bytes)
		}
		ids[c.Name] = *c.SnapshotID
	}
	if st.Components[2].Kind != "command" || st.Components[0].Kind != "files" {
		t.Errorf("kinds: %+v", st.Components)
	}
	if again := e.status(st.ID); again.ID != st.ID || again.Phase != "completed" {
		t.Errorf("status by id: %+v", again)
	}
	if again := e.status(st.ID[:8]); again.ID != st.ID {
		t.Errorf("status by id prefix: %+v", again)
	}

	// Each component is an ordinary snapshot carrying cluster, component,
	// run and the node as its host.
	snaps := e.Snapshots("--run", st.ID)
	if len(snaps) != 3 {
		t.Fatalf("snapshots --run: %d, want 3", len(snaps))
	}
	for _, sn := range snaps {
		comp, _ := sn["component"].(string)
		if sn["id"] != ids[comp] || sn["cluster"] != "prod" || sn["run"] != st.ID || sn["hostname"] != "node1" {
			t.Errorf("snapshot of %s: %v", comp, sn)
		}
	}

	// The command's output is one file named after the component.
	target := filepath.Join(e.Dir, "restore-grid")
	e.Must("restore", ids["grid-caches"], "--target", target)
	if b, err := os.ReadFile(filepath.Join(target, "grid-caches")); err != nil || string(b) != "cache-a\ncache-b\n" {
		t.Errorf("restored command output: %q, %v", b, err)
	}
	// The data component left out what its excludes name.
	target = filepath.Join(e.Dir, "restore-data")
	e.Must("restore", ids["data"], "--target", target)
	src := filepath.Join(e.Dir, "var-app")
	if _, err := os.Stat(filepath.Join(target, src, "data.db")); err != nil {
		t.Errorf("data.db not restored: %v", err)
	}
	if _, err := os.Stat(filepath.Join(target, src, "cache", "junk.tmp")); err == nil {
		t.Error("an excluded file was backed up")
	}

	// A second run is incremental: each files component's parent is its
	// snapshot of the first run, and the new run is the latest.
	e.Must("backup", "--config", config, "--node", "node1", "--json")
	st2 := e.status()
	if st2.ID == st.ID || st2.Phase != "completed" {
		t.Fatalf("second run: %+v", st2)
	}
	for _, sn := range e.Snapshots("--run", st2.ID) {
		comp, _ := sn["component"].(string)
		if comp != "grid-caches" && sn["parent"] != ids[comp] {
			t.Errorf("second run, %s: parent %v, want %s", comp, sn["parent"], ids[comp])
		}
	}
	if n := len(e.Snapshots("--run", st.ID)); n != 3 {
		t.Errorf("snapshots --run of the first run after the second: %d", n)
	}
}

func TestClusterBackupSummaryJSON(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	config, _ := threeComponents(t, e, 0)
	r := e.Must("backup", "--config", config, "--json")
	lines := JSONLines(t, r.Stdout)
	sum := lines[len(lines)-1]
	if sum["message_type"] != "summary" || sum["phase"] != "completed" {
		t.Fatalf("the last line is not the run's summary: %v", sum)
	}
	st := e.status(sum["id"].(string))
	if comps, _ := sum["components"].([]any); len(comps) != len(st.Components) {
		t.Errorf("summary lists %d components, status %d", len(comps), len(st.Components))
	}
}

func TestClusterComponentFails(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	config, marker := threeComponents(t, e, 3)

	r := e.Fails(1, "backup", "--config", config)
	if !strings.Contains(r.Stderr, "grid-caches") {
		t.Errorf("the error does not name the failed component:\n%s", r.Stderr)
	}
	if got := readMarker(t, marker); got != "failed" {
		t.Errorf("post hook saw result %q, want failed", got)
	}
	st := e.status("latest")
	if st.Phase != "failed" {
		t.Errorf("run phase %s, want failed", st.Phase)
	}
	failed := st.Components[st.component(t, "grid-caches")]
	if failed.Phase != "failed" || failed.Error == nil || *failed.Error == "" || failed.SnapshotID != nil {
		t.Errorf("failed component: phase %s, error %v, snapshot %v", failed.Phase, failed.Error, failed.SnapshotID)
	}
	// The others completed and restore.
	for _, name := range []string{"config", "data"} {
		c := st.Components[st.component(t, name)]
		if c.Phase != "completed" || c.SnapshotID == nil {
			t.Errorf("%s: phase %s, snapshot %v", name, c.Phase, c.SnapshotID)
			continue
		}
		target := filepath.Join(e.Dir, "restore-"+name)
		e.Must("restore", *c.SnapshotID, "--target", target)
	}
	src := filepath.Join(e.Dir, "etc-app", "sub", "users.conf")
	if b, err := os.ReadFile(filepath.Join(e.Dir, "restore-config", src)); err != nil || string(b) != "alice\nbob\n" {
		t.Errorf("restored config: %q, %v", b, err)
	}
	// The failed command saved nothing.
	if n := len(e.Snapshots("--run", st.ID, "--component", "grid-caches")); n != 0 {
		t.Errorf("%d snapshots of the failed component", n)
	}
}

func TestClusterComponentHooks(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	a, _ := clusterSources(t, e)
	log := filepath.Join(e.Dir, "hooks.log")
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
components:
  - name: app
    kind: files
    paths: [%[1]s]
    hooks:
      pre: [["sh", "-c", "echo stop $CAIRN_COMPONENT >> %[2]s"]]
      post: [["sh", "-c", "echo start $CAIRN_COMPONENT $CAIRN_RESULT >> %[2]s"]]
  - name: broken
    kind: files
    paths: [%[1]s]
    hooks:
      pre: [["sh", "-c", "echo cannot stop >&2; exit 2"]]
      post: [["sh", "-c", "echo start $CAIRN_COMPONENT $CAIRN_RESULT >> %[2]s"]]
`, a, log))
	r := e.Fails(1, "backup", "--config", config)
	if !strings.Contains(r.Stderr, "[broken pre sh] cannot stop") {
		t.Errorf("hook output not in the run log:\n%s", r.Stderr)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "stop app\nstart app completed\nstart broken failed\n"; got != want {
		t.Errorf("hooks ran as\n%s\nwant\n%s", got, want)
	}
	st := e.status()
	c := st.Components[st.component(t, "broken")]
	if c.Phase != "failed" || c.Error == nil || !strings.Contains(*c.Error, "exit status 2") {
		t.Errorf("component whose pre hook failed: %s, %v", c.Phase, c.Error)
	}
}

func TestClusterHookTimeout(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	a, _ := clusterSources(t, e)
	marker := filepath.Join(e.Dir, "resumed")
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
hooks:
  pre: [["sleep", "60"]]
  post: [["touch", "%s"]]
  timeout: 1s
components:
  - {name: config, kind: files, paths: [%s]}
`, marker, a))
	start := time.Now()
	r := e.Fails(1, "backup", "--config", config)
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("a hook with a 1s timeout held the run for %s", took)
	}
	if !strings.Contains(r.Stderr, "run pre hook sleep: timed out after 1s") {
		t.Errorf("no clear timeout message:\n%s", r.Stderr)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the post hook did not run after the pre hook failed: %v", err)
	}
	// Nothing was backed up while the cluster was not paused.
	st := e.status()
	c := st.Components[0]
	if st.Phase != "failed" || c.Phase != "failed" || c.Error == nil || !strings.Contains(*c.Error, "timed out") {
		t.Errorf("run after the pre hook timed out: %s; component %s, %v", st.Phase, c.Phase, c.Error)
	}
	if n := len(e.Snapshots()); n != 0 {
		t.Errorf("%d snapshots saved though the pre hook failed", n)
	}
}

// Two processes, as on two nodes, add their components to one run at once.
func TestClusterConcurrentProcesses(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	a, b := clusterSources(t, e)
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
components:
  - {name: app-config, kind: files, node: node1, paths: [%s]}
  - {name: app-data, kind: files, node: node1, paths: [%s]}
  - {name: db-main, kind: command, node: node2, backup: ["sh", "-c", "sleep 0.2; echo main"]}
  - {name: db-acl, kind: command, node: node2, backup: ["sh", "-c", "echo acl"]}
`, a, b))
	const run = "6b1f7d2e-0c8a-4f5e-9d3b-2a7c1e9f4b60"
	cmds := [][]string{
		{"backup", "--config", config, "--run", run, "--node", "node1", "--component", "app-*"},
		{"backup", "--config", config, "--run", run, "--node", "node2", "--component", "db-*"},
	}
	type proc struct {
		args      []string
		out, errb *bytes.Buffer
		wait      func() error
	}
	var started []proc
	for _, args := range cmds {
		cmd := e.Cmd(args...)
		p := proc{args: args, out: &bytes.Buffer{}, errb: &bytes.Buffer{}}
		cmd.Stdout, cmd.Stderr = p.out, p.errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p.wait = cmd.Wait
		started = append(started, p)
	}
	for _, p := range started {
		if err := p.wait(); err != nil {
			t.Errorf("cairn %s: %v\n%s", strings.Join(p.args, " "), err, p.errb)
		}
	}
	st := e.status(run)
	if st.ID != run || st.Phase != "completed" || len(st.Components) != 4 {
		t.Fatalf("run after both processes: %+v", st)
	}
	for _, c := range st.Components {
		want := "node1"
		if strings.HasPrefix(c.Name, "db-") {
			want = "node2"
		}
		if c.Phase != "completed" || c.Node == nil || *c.Node != want || c.SnapshotID == nil {
			t.Errorf("%s: phase %s, node %v, snapshot %v", c.Name, c.Phase, c.Node, c.SnapshotID)
		}
	}
	if n := len(e.Snapshots("--run", run)); n != 4 {
		t.Errorf("snapshots --run: %d, want 4", n)
	}
}

func TestClusterMissingComponent(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	a, _ := clusterSources(t, e)
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
components:
  - {name: config, kind: files, paths: [%s]}
  - {name: etcd, kind: command, node: node9, backup: ["echo", "snapshot"]}
`, a))
	const run = "nightly-2026-11-22"
	e.Must("backup", "--config", config, "--run", run, "--node", "node1")
	st := e.status(run)
	if st.Phase != "running" || st.Finished != nil {
		t.Errorf("a run waiting for a component: phase %s, finished %v", st.Phase, st.Finished)
	}
	if c := st.Components[st.component(t, "etcd")]; c.Phase != "pending" {
		t.Errorf("unreported component: %s", c.Phase)
	}

	r := e.Must("status", run, "--close")
	if !strings.Contains(r.Stdout, "missing") {
		t.Errorf("status --close does not show the missing component:\n%s", r.Stdout)
	}
	st = e.status(run)
	if st.Phase != "failed" || st.Finished == nil {
		t.Errorf("closed run: phase %s, finished %v", st.Phase, st.Finished)
	}
	etcd := st.Components[st.component(t, "etcd")]
	if etcd.Phase != "missing" || etcd.SnapshotID != nil {
		t.Errorf("closed run, etcd: %s, %v", etcd.Phase, etcd.SnapshotID)
	}
	if c := st.Components[st.component(t, "config")]; c.Phase != "completed" {
		t.Errorf("closed run, config: %s", c.Phase)
	}
}

func TestClusterConfigErrors(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	a, _ := clusterSources(t, e)
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
components:
  - name: config
    kind: files
    paths: [%s]
    exlude: ["*.tmp"]
`, a))
	r := e.Fails(1, "backup", "--config", config)
	if !strings.Contains(r.Stderr, "line 6") || !strings.Contains(r.Stderr, "exlude") {
		t.Errorf("the error does not name the line and the key:\n%s", r.Stderr)
	}
	if n := strings.Count(strings.TrimSpace(r.Stderr), "\n"); n != 0 {
		t.Errorf("the error takes %d lines:\n%s", n+1, r.Stderr)
	}
	config = writeConfig(t, e, "cluster: prod\ncomponents:\n  - {name: db, kind: postgres}\n  - {name: x, kind: files, paths: [/x], dsn: y}\n")
	r = e.Fails(1, "backup", "--config", config)
	for _, want := range []string{"line 3: component db: kind postgres needs dsn", "line 4: component x: key dsn does not apply to kind files"} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.Stderr)
		}
	}
	e.Fails(1, "backup", "--config", filepath.Join(e.Dir, "nonexistent.yaml"))
	e.Fails(1, "backup", "--config", config, a)
	e.Fails(1, "backup", "--run", "x", a)
	e.Fails(1, "status", "no-such-run")
	// Nothing reached the repository.
	if n := len(e.Snapshots()); n != 0 {
		t.Errorf("%d snapshots after refused runs", n)
	}
	if r := e.Fails(1, "status"); !strings.Contains(r.Stderr, "no runs") {
		t.Errorf("status of an empty repository: %s", r.Stderr)
	}
}

// The cluster file can name the repository and its password.
func TestClusterRepositoryFromConfig(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	a, _ := clusterSources(t, e)
	pwFile := filepath.Join(e.Dir, "password")
	WriteFile(t, pwFile, []byte(e.Password+"\n"))
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
repository: %s
password_file: %s
components:
  - {name: config, kind: files, paths: [%s]}
`, e.Repo, pwFile, a))
	e.Extra = append(e.Extra, "CAIRN_REPOSITORY=", "CAIRN_PASSWORD=")
	e.Must("backup", "--config", config)
	e.Extra = e.Extra[:len(e.Extra)-2]
	if st := e.status(); st.Phase != "completed" {
		t.Errorf("run: %+v", st)
	}
}

// An interrupted run still runs its post hooks and records how the
// component it was taking ended.
func TestClusterInterrupted(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	started, resumed := filepath.Join(e.Dir, "started"), filepath.Join(e.Dir, "resumed")
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
hooks:
  post: [["sh", "-c", "echo $CAIRN_RESULT > %s"]]
components:
  - name: slow
    kind: command
    backup: ["sh", "-c", "touch %s; exec sleep 60"]
`, resumed, started))
	cmd := e.Cmd("backup", "--config", config)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(started); err == nil {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("the component never started:\n%s", errb.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if cmd.ProcessState.ExitCode() != 130 {
		t.Errorf("interrupted backup: %v, want exit 130\n%s", err, errb.String())
	}
	if got := readMarker(t, resumed); got != "failed" {
		t.Errorf("post hook after an interruption saw %q", got)
	}
	st := e.status()
	if c := st.Components[0]; c.Phase != "failed" || c.Error == nil {
		t.Errorf("interrupted component: %s, %v", c.Phase, c.Error)
	}
}
