package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/tests/testenv"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// The tests in this file cover restores of cluster runs (into a directory
// and into the live system) and `forget --config` (docs/cluster.md).

// nightly is a cluster of two files components and a command component
// whose live paths sit in a directory of their own, next to a file that no
// restore may touch.
type nightly struct {
	t                *testing.T
	e                *Env
	config           string
	etc, data        string // the files components' paths
	grid             string // what the command component's backup prints
	gridOut          string // where its restore command writes what it reads
	bystander        string // a file beside the paths
	bystanderContent string
}

func newNightly(t *testing.T, e *Env, retention string) *nightly {
	t.Helper()
	live := filepath.Join(e.Dir, "live")
	n := &nightly{t: t, e: e,
		etc: filepath.Join(live, "etc-app"), data: filepath.Join(live, "var-app"),
		grid: filepath.Join(e.Dir, "grid.txt"), gridOut: filepath.Join(e.Dir, "grid-imported"),
		bystander: filepath.Join(live, "bystander.txt"), bystanderContent: "not part of any component\n",
	}
	WriteFile(t, filepath.Join(n.etc, "app.conf"), []byte("listen 8080\n"))
	WriteFile(t, filepath.Join(n.etc, "sub", "users.conf"), []byte("alice\n"))
	WriteFile(t, filepath.Join(n.data, "data.db"), bytes.Repeat([]byte("night 1 row\n"), 2000))
	WriteFile(t, n.grid, []byte("grid night 1\n"))
	WriteFile(t, n.bystander, []byte(n.bystanderContent))
	n.config = filepath.Join(e.Dir, "cluster.yaml")
	WriteFile(t, n.config, []byte(fmt.Sprintf(`cluster: prod
components:
  - name: config
    kind: files
    paths: [%s]
  - name: data
    kind: files
    paths: [%s]
  - name: grid-caches
    kind: command
    backup: ["cat", "%s"]
    restore: ["sh", "-c", "cat > %s"]
%s`, n.etc, n.data, n.grid, n.gridOut, retention)))
	return n
}

// backup runs the cluster backup on node1 and returns the run id.
func (n *nightly) backup() string {
	n.t.Helper()
	r := n.e.Must("backup", "--config", n.config, "--node", "node1", "--json")
	id, _ := Summary(n.t, r.Stdout)["id"].(string)
	if id == "" {
		n.t.Fatalf("no run id in the summary:\n%s", r.Stdout)
	}
	return id
}

// nightTwo changes every component's data.
func (n *nightly) nightTwo() {
	n.t.Helper()
	WriteFile(n.t, filepath.Join(n.etc, "app.conf"), []byte("listen 9090\n"))
	WriteFile(n.t, filepath.Join(n.etc, "added.conf"), []byte("new in night 2\n"))
	WriteFile(n.t, filepath.Join(n.data, "data.db"), bytes.Repeat([]byte("night 2 row\n"), 2000))
	WriteFile(n.t, n.grid, []byte("grid night 2\n"))
}

// readRestored returns a file's content, or "" with the test failed.
func readRestored(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Errorf("read %s: %v", name, err)
		return ""
	}
	return string(b)
}

func onDisk(name string) bool {
	_, err := os.Lstat(name)
	return err == nil
}

// checkNight checks a run restored into dir: each component under
// dir/COMPONENT/, files at their full paths, the command's output as one
// file named after the component.
func (n *nightly) checkNight(dir string, night int) {
	n.t.Helper()
	conf := map[int]string{1: "listen 8080\n", 2: "listen 9090\n"}[night]
	if got := readRestored(n.t, filepath.Join(dir, "config", n.etc, "app.conf")); got != conf {
		n.t.Errorf("night %d: config app.conf = %q, want %q", night, got, conf)
	}
	if got := readRestored(n.t, filepath.Join(dir, "config", n.etc, "sub", "users.conf")); got != "alice\n" {
		n.t.Errorf("night %d: users.conf = %q", night, got)
	}
	if added := onDisk(filepath.Join(dir, "config", n.etc, "added.conf")); added != (night == 2) {
		n.t.Errorf("night %d: added.conf restored: %v", night, added)
	}
	row := fmt.Sprintf("night %d row\n", night)
	if got := readRestored(n.t, filepath.Join(dir, "data", n.data, "data.db")); got != strings.Repeat(row, 2000) {
		n.t.Errorf("night %d: data.db holds %d bytes starting %q", night, len(got), got[:min(len(got), 12)])
	}
	grid := fmt.Sprintf("grid night %d\n", night)
	if got := readRestored(n.t, filepath.Join(dir, "grid-caches", "grid-caches")); got != grid {
		n.t.Errorf("night %d: grid-caches = %q, want %q", night, got, grid)
	}
}

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func TestClusterRestoreRun(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	n := newNightly(t, e, "")
	run1 := n.backup()
	between := time.Now()
	if between.Nanosecond() == 0 {
		between = between.Add(time.Nanosecond) // a whole second would cover the next run too
	}
	time.Sleep(10 * time.Millisecond)
	n.nightTwo()
	run2 := n.backup()

	dir := filepath.Join(e.Dir, "r1")
	r := e.Must("restore", run1, "--target", dir)
	n.checkNight(dir, 1)
	if got := dirEntries(t, dir); strings.Join(got, " ") != "config data grid-caches" {
		t.Errorf("the run's target holds %v, want one directory per component", got)
	}
	if !strings.Contains(r.Stdout, run1) {
		t.Errorf("the output does not name the run:\n%s", r.Stdout)
	}

	// A prefix of the run id (hex digits, like a snapshot id) works too.
	dir = filepath.Join(e.Dir, "r2")
	e.Must("restore", run2[:8], "--target", dir)
	n.checkNight(dir, 2)

	// --component narrows, and is repeatable.
	dir = filepath.Join(e.Dir, "grid-only")
	e.Must("restore", run1, "--target", dir, "--component", "grid-*")
	if got := dirEntries(t, dir); len(got) != 1 || got[0] != "grid-caches" {
		t.Errorf("--component grid-*: restored %v", got)
	}
	dir = filepath.Join(e.Dir, "files-only")
	e.Must("restore", run1, "--target", dir, "--component", "config", "--component", "data")
	if got := dirEntries(t, dir); strings.Join(got, " ") != "config data" {
		t.Errorf("--component config --component data: restored %v", got)
	}
	e.Fails(1, "restore", run1, "--target", filepath.Join(e.Dir, "none"), "--component", "nothing-*")

	// Point in time: the newest run at or before the time, which is run 1.
	dir = filepath.Join(e.Dir, "as-of")
	e.Must("restore", "latest-run", "--as-of", between.Format(time.RFC3339Nano), "--target", dir)
	n.checkNight(dir, 1)
	// With the cluster file, --as-of alone means the cluster's state then.
	dir = filepath.Join(e.Dir, "as-of-config")
	e.Must("restore", "--as-of", between.Format(time.RFC3339Nano), "--config", n.config, "--target", dir)
	n.checkNight(dir, 1)
	dir = filepath.Join(e.Dir, "latest")
	e.Must("restore", "latest-run", "--target", dir, "--cluster", "prod")
	n.checkNight(dir, 2)
	before := time.Now().Add(-time.Hour).Format(time.RFC3339)
	e.Fails(1, "restore", "latest-run", "--as-of", before, "--target", filepath.Join(e.Dir, "none"))

	// --json ends with a summary naming each component.
	r = e.Must("restore", run1, "--target", filepath.Join(e.Dir, "json"), "--json")
	sum := Summary(t, r.Stdout)
	comps, _ := sum["components"].([]any)
	if sum["run_id"] != run1 || len(comps) != 3 {
		t.Fatalf("summary: %v", sum)
	}
	for _, c := range comps {
		c := c.(map[string]any)
		if c["restored"] != true || c["error"] != nil || c["target"] != filepath.Join(e.Dir, "json", c["name"].(string)) {
			t.Errorf("summary of component: %v", c)
		}
	}

	// Unknown ids are errors, not empty restores.
	e.Fails(1, "restore", "6b1f7d2e-0000-4000-8000-000000000000", "--target", filepath.Join(e.Dir, "none"))
	e.Fails(1, "restore", "abcdef12", "--target", filepath.Join(e.Dir, "none"))
	if onDisk(filepath.Join(e.Dir, "none")) {
		t.Error("a refused restore created its target")
	}
}

func TestClusterRestoreToLive(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	n := newNightly(t, e, "")
	run1 := n.backup()
	n.nightTwo()
	n.backup()

	// The command component's restore command reads the first night's output.
	e.Must("restore", run1, "--to-live", "--config", n.config, "--component", "grid-caches")
	if got := readRestored(t, n.gridOut); got != "grid night 1\n" {
		t.Errorf("the restore command read %q", got)
	}

	// A files component goes back to its own paths, which are not empty:
	// refused without --overwrite, and nothing changes.
	conf := filepath.Join(n.etc, "app.conf")
	r := e.Fails(1, "restore", run1, "--to-live", "--config", n.config, "--component", "config")
	if !strings.Contains(r.Stderr, n.etc) || !strings.Contains(r.Stderr, "--overwrite always") {
		t.Errorf("the refusal does not name the path and the way out:\n%s", r.Stderr)
	}
	if got := readRestored(t, conf); got != "listen 9090\n" {
		t.Errorf("a refused restore changed app.conf: %q", got)
	}

	e.Must("restore", run1, "--to-live", "--config", n.config, "--component", "config", "--overwrite", "always")
	if got := readRestored(t, conf); got != "listen 8080\n" {
		t.Errorf("app.conf after the live restore: %q", got)
	}
	if !onDisk(filepath.Join(n.etc, "added.conf")) {
		t.Error("without --delete, a file the snapshot lacks was removed")
	}
	// The other components were not selected: their data is night 2's.
	if got := readRestored(t, filepath.Join(n.data, "data.db")); !strings.HasPrefix(got, "night 2 row") {
		t.Errorf("data.db changed though only config was selected: %q...", got[:min(len(got), 12)])
	}

	// --delete removes what the snapshot lacks below the paths, and nothing
	// beside them.
	WriteFile(t, conf, []byte("edited again\n"))
	e.Must("restore", run1, "--to-live", "--config", n.config, "--component", "config", "--overwrite", "always", "--delete")
	if got := readRestored(t, conf); got != "listen 8080\n" {
		t.Errorf("app.conf after the second live restore: %q", got)
	}
	if onDisk(filepath.Join(n.etc, "added.conf")) {
		t.Error("--delete left a file the snapshot lacks")
	}
	if got := readRestored(t, n.bystander); got != n.bystanderContent {
		t.Errorf("a file beside the component's path changed: %q", got)
	}
	if got := dirEntries(t, filepath.Dir(n.etc)); strings.Join(got, " ") != "bystander.txt etc-app var-app" {
		t.Errorf("the directory holding the paths now has %v", got)
	}

	// A whole run to a new machine: the paths are gone, so no --overwrite
	// is needed.
	for _, p := range []string{n.etc, n.data} {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	os.Remove(n.gridOut)
	e.Must("restore", run1, "--to-live", "--config", n.config)
	if got := readRestored(t, conf); got != "listen 8080\n" {
		t.Errorf("app.conf after restoring the run to live: %q", got)
	}
	if got := readRestored(t, filepath.Join(n.data, "data.db")); !strings.HasPrefix(got, "night 1 row") {
		t.Errorf("data.db after restoring the run to live: %q...", got[:min(len(got), 12)])
	}
	if got := readRestored(t, n.gridOut); got != "grid night 1\n" {
		t.Errorf("the restore command read %q", got)
	}

	// Misuse is refused before anything is written.
	e.Fails(1, "restore", run1, "--to-live")                                                // no cluster file
	e.Fails(1, "restore", run1, "--to-live", "--config", n.config, "--target", e.Dir)       // both
	e.Fails(1, "restore", run1, "--to-live", "--config", n.config, "--target-dsn", "x")     // no such component
	e.Fails(1, "restore", run1, "--target", filepath.Join(e.Dir, "x"), "--target-dsn", "x") // not live
}

func TestClusterRestoreFailedComponent(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	src := filepath.Join(e.Dir, "etc-app")
	WriteFile(t, filepath.Join(src, "app.conf"), []byte("listen 8080\n"))
	config := filepath.Join(e.Dir, "cluster.yaml")
	WriteFile(t, config, []byte(fmt.Sprintf(`cluster: prod
components:
  - {name: config, kind: files, paths: [%s]}
  - {name: grid-caches, kind: command, backup: ["sh", "-c", "echo partial; exit 3"]}
`, src)))
	e.Fails(1, "backup", "--config", config)
	var st struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(e.Must("status", "--json").Stdout), &st); err != nil || st.ID == "" {
		t.Fatalf("status: %v", err)
	}

	// The completed component is restored; the failed one is reported and
	// makes the exit code 1.
	dir := filepath.Join(e.Dir, "restored")
	r := e.Fails(1, "restore", st.ID, "--target", dir)
	if got := readRestored(t, filepath.Join(dir, "config", src, "app.conf")); got != "listen 8080\n" {
		t.Errorf("the completed component was not restored: %q", got)
	}
	if onDisk(filepath.Join(dir, "grid-caches")) {
		t.Error("the failed component left a directory")
	}
	if !strings.Contains(r.Stderr, "grid-caches") || !strings.Contains(r.Stderr, "failed") {
		t.Errorf("the error does not name the failed component:\n%s", r.Stderr)
	}
	// Selecting only what completed succeeds.
	e.Must("restore", st.ID, "--target", filepath.Join(e.Dir, "config-only"), "--component", "config")
}

func TestClusterRestoreForget(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	n := newNightly(t, e, "retention:\n  keep_last: 1\n")
	run1 := n.backup()
	n.nightTwo()
	run2 := n.backup()

	// A dry run removes nothing.
	r := e.Must("forget", "--config", n.config, "--dry-run")
	if !strings.Contains(r.Stdout, run1) || strings.Contains(r.Stdout, run2) {
		t.Errorf("the dry run does not name run 1 alone:\n%s", r.Stdout)
	}
	if got := len(e.Snapshots()); got != 6 {
		t.Errorf("%d snapshots after a dry run, want 6", got)
	}
	e.Must("status", run1)

	// A snapshot of another cluster is outside the file's retention.
	other := filepath.Join(e.Dir, "other")
	WriteFile(t, filepath.Join(other, "x"), []byte("x"))
	e.Must("backup", other, "--cluster", "staging", "--component", "config")
	e.Must("backup", other, "--cluster", "staging", "--component", "config")

	e.Must("forget", "--config", n.config)
	if got := len(e.Snapshots("--run", run1)); got != 0 {
		t.Errorf("%d snapshots of run 1 left", got)
	}
	if got := len(e.Snapshots("--run", run2)); got != 3 {
		t.Errorf("%d snapshots of run 2 left, want 3", got)
	}
	if got := len(e.Snapshots("--cluster", "staging")); got != 2 {
		t.Errorf("%d snapshots of the other cluster left, want 2", got)
	}
	if r := e.Fails(1, "status", run1); !strings.Contains(r.Stderr, "no run") {
		t.Errorf("status of the forgotten run: %s", r.Stderr)
	}
	if st := e.Must("status", run2); !strings.Contains(st.Stdout, "completed") {
		t.Errorf("status of run 2:\n%s", st.Stdout)
	}
	dir := filepath.Join(e.Dir, "r2")
	e.Must("restore", run2, "--target", dir)
	n.checkNight(dir, 2)
	e.Fails(1, "restore", run1, "--target", filepath.Join(e.Dir, "r1"))

	// A file without retention, and no --keep-*: refused, nothing removed.
	bare := filepath.Join(e.Dir, "bare.yaml")
	WriteFile(t, bare, []byte(fmt.Sprintf("cluster: prod\ncomponents:\n  - {name: config, kind: files, paths: [%s]}\n", n.etc)))
	r = e.Fails(1, "forget", "--config", bare)
	if !strings.Contains(r.Stderr, "retention") {
		t.Errorf("the refusal does not say why:\n%s", r.Stderr)
	}
	if got := len(e.Snapshots()); got != 5 {
		t.Errorf("%d snapshots after a refused forget, want 5", got)
	}
}

// pgExec runs SQL in database db of srv and returns psql's unaligned output.
func pgExec(t *testing.T, srv *testenv.PostgresServer, db, sql string) string {
	t.Helper()
	cmd := exec.Command(srv.Bin("psql"), "--no-psqlrc", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql)
	cmd.Env = append(os.Environ(), srv.Env()...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql %s: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestClusterRestorePostgresLive(t *testing.T) {
	t.Parallel()
	srv := testenv.Postgres(t)
	e := NewRepo(t)
	e.Extra = append(e.Extra, "CAIRN_PG_BINDIR="+srv.BinDir)
	pgExec(t, srv, "postgres", "CREATE DATABASE shop")
	pgExec(t, srv, "shop", `CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 2500) g;
CREATE TABLE orders (id serial PRIMARY KEY, item int REFERENCES items, qty int);
INSERT INTO orders (item, qty) SELECT g % 2500 + 1, g FROM generate_series(1, 700) g;`)
	config := filepath.Join(e.Dir, "cluster.yaml")
	WriteFile(t, config, []byte(fmt.Sprintf(`cluster: prod
components:
  - {name: db, kind: postgres, dsn: "%s"}
`, srv.DSN("shop"))))
	r := e.Must("backup", "--config", config, "--json")
	run, _ := Summary(t, r.Stdout)["id"].(string)

	// Into a directory: the dump as a file.
	dir := filepath.Join(e.Dir, "dir")
	e.Must("restore", run, "--target", dir)
	if got := readRestored(t, filepath.Join(dir, "db", "dump.sql")); !strings.Contains(got, "CREATE TABLE public.items") {
		t.Errorf("dump.sql does not create the table: %d bytes", len(got))
	}

	// Into a new database of the server.
	e.Must("restore", run, "--to-live", "--config", config, "--target-dsn", srv.DSN("shop_restored"))
	for _, table := range []string{"items", "orders"} {
		q := "SELECT count(*) FROM " + table
		if want, got := pgExec(t, srv, "shop", q), pgExec(t, srv, "shop_restored", q); got != want {
			t.Errorf("%s: %s rows restored, want %s", table, got, want)
		}
	}
	// The database is no longer empty: only --overwrite always replaces it.
	pgExec(t, srv, "shop_restored", "DELETE FROM orders WHERE id > 100")
	e.Fails(1, "restore", run, "--to-live", "--config", config, "--target-dsn", srv.DSN("shop_restored"))
	if got := pgExec(t, srv, "shop_restored", "SELECT count(*) FROM orders"); got != "100" {
		t.Errorf("a refused restore changed the database: %s orders", got)
	}
	e.Must("restore", run, "--to-live", "--config", config, "--target-dsn", srv.DSN("shop_restored"), "--overwrite", "always")
	if got := pgExec(t, srv, "shop_restored", "SELECT count(*) FROM orders"); got != "700" {
		t.Errorf("after --overwrite always: %s orders, want 700", got)
	}
}

// bucketObjects reads every object of bucket: key to content type, user
// metadata and content.
func bucketObjects(t *testing.T, client *minio.Client, bucket string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for o := range client.ListObjects(t.Context(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		obj, err := client.GetObject(t.Context(), bucket, o.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if _, err := b.ReadFrom(obj); err != nil {
			t.Fatal(err)
		}
		info, err := obj.Stat()
		if err != nil {
			t.Fatal(err)
		}
		out[o.Key] = fmt.Sprintf("%s %v %q", info.ContentType, info.UserMetadata, b.String())
	}
	return out
}

func TestClusterRestoreS3Live(t *testing.T) {
	t.Parallel()
	srv := testenv.MinIO(t)
	client, err := minio.New(srv.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(srv.AccessKey, srv.SecretKey, ""), Region: srv.Region})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := client.MakeBucket(ctx, "pach-data", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	for key, data := range map[string]string{"data/a.txt": "alpha\n", "data/sub/b.bin": strings.Repeat("b", 70000), "other/c": "not selected"} {
		_, err := client.PutObject(ctx, "pach-data", key, strings.NewReader(data), int64(len(data)),
			minio.PutObjectOptions{ContentType: "text/x-test", UserMetadata: map[string]string{"owner": "pipeline"}})
		if err != nil {
			t.Fatal(err)
		}
	}
	e := NewRepo(t)
	// The source's credentials by name: the repository may be on another
	// S3 server, with the AWS_* variables its own.
	e.Extra = append(e.Extra, "SRC_AK="+srv.AccessKey, "SRC_SK="+srv.SecretKey)
	config := filepath.Join(e.Dir, "cluster.yaml")
	WriteFile(t, config, []byte(fmt.Sprintf(`cluster: prod
components:
  - name: objects
    kind: s3
    endpoint: http://%s
    bucket: pach-data
    prefix: data/
    access_key_env: SRC_AK
    secret_key_env: SRC_SK
    restore: {prefix: copy/}
`, srv.Endpoint)))
	r := e.Must("backup", "--config", config, "--json")
	run, _ := Summary(t, r.Stdout)["id"].(string)

	e.Must("restore", run, "--to-live", "--config", config, "--target-bucket", "restored")
	src := bucketObjects(t, client, "pach-data")
	got := bucketObjects(t, client, "restored")
	want := map[string]string{"copy/a.txt": src["data/a.txt"], "copy/sub/b.bin": src["data/sub/b.bin"]}
	if len(got) != len(want) {
		t.Errorf("restored bucket holds %d objects, want %d: %v", len(got), len(want), got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("restored %s: %.80s, want %.80s", k, got[k], v)
		}
	}

	// The target prefix is no longer empty: only --overwrite always writes.
	if err := client.RemoveObject(ctx, "restored", "copy/a.txt", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	e.Fails(1, "restore", run, "--to-live", "--config", config, "--target-bucket", "restored")
	if n := len(bucketObjects(t, client, "restored")); n != 1 {
		t.Errorf("a refused restore left %d objects, want 1", n)
	}
	e.Must("restore", run, "--to-live", "--config", config, "--target-bucket", "restored", "--overwrite", "always")
	if got := bucketObjects(t, client, "restored"); got["copy/a.txt"] != src["data/a.txt"] {
		t.Errorf("after --overwrite always: %v", got)
	}
}

// TestClusterCopyRun: a run's snapshots copied to another repository bring
// the run's records along, naming the copies, so that the run can be
// restored there by its id; a component whose snapshot was not copied is
// not claimed there, and copying again adds nothing.
func TestClusterCopyRun(t *testing.T) {
	t.Parallel()
	e := NewRepo(t)
	n := newNightly(t, e, "")
	run1 := n.backup()
	pwFile := writePassword(t, e.Dir, e.Password)
	newDst := func() *Env {
		dst := NewEnv(t)
		dst.Password = "the offsite password"
		dst.Must("init")
		return dst
	}

	dst := newDst()
	sum, copies := copyJSON(t, dst, "--from-repo", e.Repo, "--from-password-file", pwFile)
	if intField(t, sum, "snapshots_copied") != 3 || intField(t, sum, "run_records_copied") == 0 {
		t.Fatalf("copy of the run: %v", sum)
	}
	dir := filepath.Join(dst.Dir, "r1")
	dst.Must("restore", run1, "--target", dir)
	n.checkNight(dir, 1)
	src, there := e.status(run1), dst.status(run1)
	if len(src.Components) != 3 {
		t.Fatalf("the run has %d components, want 3", len(src.Components))
	}
	for _, c := range src.Components {
		d := there.Components[there.component(t, c.Name)]
		if d.Phase != "completed" || d.SnapshotID == nil || *d.SnapshotID != copies[*c.SnapshotID] {
			t.Errorf("component %s in the copy's run: %+v; the source's snapshot %s was copied as %s",
				c.Name, d, *c.SnapshotID, copies[*c.SnapshotID])
		}
	}
	sum, _ = copyJSON(t, dst, "--from-repo", e.Repo, "--from-password-file", pwFile)
	if intField(t, sum, "snapshots_copied") != 0 || intField(t, sum, "run_records_copied") != 0 {
		t.Errorf("a second copy added %v", sum)
	}

	// One component only: the others are not reported in that copy.
	part := newDst()
	copyJSON(t, part, "--from-repo", e.Repo, "--from-password-file", pwFile, "--component", "config")
	st := part.status(run1)
	if len(st.Components) != 3 {
		t.Errorf("the partial copy's run has %d components, want the 3 expected", len(st.Components))
	}
	for _, c := range st.Components {
		if (c.Phase == "completed") != (c.Name == "config") {
			t.Errorf("after copying only config, the run there has %s %s", c.Name, c.Phase)
		}
	}
	dir = filepath.Join(part.Dir, "config-only")
	part.Must("restore", run1, "--target", dir, "--component", "config")
	if got := readRestored(t, filepath.Join(dir, "config", n.etc, "app.conf")); got != "listen 8080\n" {
		t.Errorf("config restored from the partial copy: %q", got)
	}
}
