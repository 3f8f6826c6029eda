package tests

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/tests/testenv"
	"github.com/minio/minio-go/v7"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The tests in this file run a cluster of every component kind against
// real servers: two nights of backups, then the first night restored into
// a directory and into new live targets (docs/cluster.md).

// allCluster is a cluster of one component of each kind, with the servers
// behind them and the cluster file that names them.
type allCluster struct {
	t      *testing.T
	e      *Env
	pg     *testenv.PostgresServer
	my     *testenv.MariaDBServer
	etcd   *testenv.EtcdServer
	redis  *testenv.RedisServer
	s3     *s3Source
	config string

	files    string // the files component's path
	grid     string // what the command component's backup prints
	gridOut  string // where its restore command writes what it reads
	etcdPeer string // the peer URL of the member a live etcd restore makes
}

// Names of the components and of what they back up.
const (
	allBucket = "pach-data"
	allPGDB   = "shop"
	allMyDB   = "acl"
)

var (
	allPGTables = []string{"items", "orders", "item_names"} // item_names is a view
	allMyTables = []string{"users", "grants"}
	allKinds    = map[string]string{"db": "postgres", "acl": "mysql", "meta": "etcd", "cache": "redis",
		"objects": "s3", "config": "files", "grid": "command"}
)

// newAllCluster starts the servers, fills them with the first night's data
// and writes the cluster file. The repository is a bucket on the same
// MinIO server as the s3 component's bucket, whatever CAIRN_TEST_BACKEND.
func newAllCluster(t *testing.T) *allCluster {
	t.Helper()
	c := &allCluster{t: t}
	c.s3 = newS3Source(t)
	c.pg = testenv.Postgres(t)
	c.my = testenv.MariaDB(t)
	c.etcd = testenv.Etcd(t)
	c.redis = testenv.Redis(t)
	c.e = s3Env(t, c.s3.srv, "cairn-repo")
	c.e.Must("init")
	c.e.Extra = append(c.e.Extra,
		"CAIRN_PG_BINDIR="+c.pg.BinDir,
		"CAIRN_ETCDUTL="+c.etcd.Bin("etcdutl"),
		"SRC_ACCESS_KEY="+c.s3.srv.AccessKey, "SRC_SECRET_KEY="+c.s3.srv.SecretKey,
		"REDIS_PASSWORD="+c.redis.Password)

	pgExec(t, c.pg, "postgres", "CREATE DATABASE "+allPGDB)
	pgExec(t, c.pg, allPGDB, `CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2));
INSERT INTO items SELECT g, 'item ' || g, g * 0.25 FROM generate_series(1, 8000) g;
CREATE TABLE orders (id serial PRIMARY KEY, item int REFERENCES items, qty int, note text);
INSERT INTO orders (item, qty, note) SELECT g % 8000 + 1, g % 7, E'note\t' || g FROM generate_series(1, 2000) g;
CREATE VIEW item_names AS SELECT id, name FROM items WHERE price > 100;`)

	myExec(t, c.my, "", "CREATE DATABASE "+allMyDB)
	myExec(t, c.my, allMyDB, `CREATE TABLE users (id int PRIMARY KEY AUTO_INCREMENT, name varchar(64) NOT NULL, role varchar(16)) ENGINE=InnoDB;
INSERT INTO users (name, role) WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 500)
  SELECT CONCAT('user', n), IF(n % 10 = 0, 'admin', 'reader') FROM seq;
CREATE TABLE grants (user_id int NOT NULL, resource varchar(64) NOT NULL, perm char(2), PRIMARY KEY (user_id, resource)) ENGINE=InnoDB;
INSERT INTO grants SELECT u.id, CONCAT('/res/', r.n), IF((u.id + r.n) % 3 = 0, 'rw', 'r-')
  FROM users u JOIN (SELECT 1 AS n UNION ALL SELECT 2 UNION ALL SELECT 3) r;`)

	cli := allEtcdClient(t, c.etcd.URL)
	for i := range 50 {
		if _, err := cli.Put(t.Context(), fmt.Sprintf("/app/config/%03d", i), strings.Repeat("v", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(t.Context(), "/app/binary", "\x00\xff\x01 bytes"); err != nil {
		t.Fatal(err)
	}

	for _, cmd := range [][]string{
		{"SET", "greeting", "hello"},
		{"SET", "counter", "41"},
		{"RPUSH", "queue", "job-1", "job-2", "job-3"},
		{"HSET", "user:1", "name", "alice", "role", "admin"},
		{"SADD", "tags", "red", "green", "blue"},
		{"ZADD", "leaders", "10", "ann", "20", "bob", "15", "cid"},
	} {
		if _, err := c.redis.Do(cmd...); err != nil {
			t.Fatalf("redis %v: %v", cmd, err)
		}
	}

	if err := c.s3.client.MakeBucket(t.Context(), allBucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		size := 300 + i*211
		if i%9 == 4 {
			size = 1<<20 + i*1000 // several chunks
		}
		c.s3.put(t, allBucket, allObjectKey(i), randomBytes(uint64(100+i), size), map[string]string{"commit": strconv.Itoa(i)})
	}

	c.files = filepath.Join(c.e.Dir, "live", "etc-app")
	for i := range 12 {
		WriteFile(t, filepath.Join(c.files, fmt.Sprintf("d%d", i%3), fmt.Sprintf("f%02d.conf", i)), randomBytes(uint64(200+i), 500+i*300))
	}
	WriteFile(t, filepath.Join(c.files, "app.conf"), []byte("listen 8080\n"))
	c.grid = filepath.Join(c.e.Dir, "grid.txt")
	c.gridOut = filepath.Join(c.e.Dir, "grid-imported")
	WriteFile(t, c.grid, []byte("grid night 1\n"))

	c.etcdPeer = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	c.config = writeConfig(t, c.e, fmt.Sprintf(`cluster: prod
hooks:
  pre: [["echo", "pausing writers"]]
  post: [["echo", "resuming writers"]]
components:
  - name: db
    kind: postgres
    dsn: "%s"
  - name: acl
    kind: mysql
    dsn: "%s"
  - name: meta
    kind: etcd
    endpoints: [%s]
    restore:
      name: meta-restored
      initial_cluster: meta-restored=%s
      initial_advertise_peer_urls: %s
      initial_cluster_token: tok-meta-restored
  - name: cache
    kind: redis
    address: %s
    password_env: REDIS_PASSWORD
  - name: objects
    kind: s3
    endpoint: http://%s
    bucket: %s
    access_key_env: SRC_ACCESS_KEY
    secret_key_env: SRC_SECRET_KEY
  - name: config
    kind: files
    paths: [%s]
  - name: grid
    kind: command
    backup: ["cat", "%s"]
    restore: ["sh", "-c", "cat > %s"]
`, c.pg.DSN(allPGDB), c.my.DSN(allMyDB), c.etcd.URL, c.etcdPeer, c.etcdPeer, c.redis.Addr,
		c.s3.srv.Endpoint, allBucket, c.files, c.grid, c.gridOut))
	return c
}

func allObjectKey(i int) string { return fmt.Sprintf("commits/%02d/part-%02d.dat", i%4, i) }

// allState is what a user would compare of the cluster's data.
type allState struct {
	pgDump   string
	pgCounts string
	my       string
	etcd     string
	redis    string
	objects  map[string]s3Object
	files    map[string]string
	grid     string
}

func (c *allCluster) state() allState {
	c.t.Helper()
	grid, err := os.ReadFile(c.grid)
	if err != nil {
		c.t.Fatal(err)
	}
	return allState{
		pgDump:   c.pg.Dump(c.t, allPGDB),
		pgCounts: allPGCounts(c.t, c.pg, allPGDB),
		my:       allMyState(c.t, c.my, allMyDB),
		etcd:     allEtcdKeys(c.t, c.etcd.URL),
		redis:    allRedisState(c.t, c.redis),
		objects:  c.s3.objects(c.t, allBucket),
		files:    treeState(c.t, c.files),
		grid:     string(grid),
	}
}

// nightTwo changes every component's data a little.
func (c *allCluster) nightTwo() {
	c.t.Helper()
	t := c.t
	pgExec(t, c.pg, allPGDB, `UPDATE items SET price = price + 1 WHERE id % 100 = 0;
DELETE FROM orders WHERE id <= 10;
INSERT INTO items SELECT g, 'item ' || g, 5 FROM generate_series(8001, 8050) g;`)
	myExec(t, c.my, allMyDB, `UPDATE users SET role = 'admin' WHERE id = 7;
DELETE FROM grants WHERE user_id = 3;
INSERT INTO users (name, role) VALUES ('late', 'reader');`)
	cli := allEtcdClient(t, c.etcd.URL)
	for _, op := range []clientv3.Op{clientv3.OpPut("/app/config/007", "changed"),
		clientv3.OpDelete("/app/config/013"), clientv3.OpPut("/app/new", "night 2")} {
		if _, err := cli.Do(t.Context(), op); err != nil {
			t.Fatal(err)
		}
	}
	for _, cmd := range [][]string{{"SET", "greeting", "good night"}, {"INCR", "counter"},
		{"RPUSH", "queue", "job-4"}, {"DEL", "tags"}, {"SET", "added", "night 2"}} {
		if _, err := c.redis.Do(cmd...); err != nil {
			t.Fatalf("redis %v: %v", cmd, err)
		}
	}
	old := c.s3.objects(t, allBucket)[allObjectKey(5)]
	c.s3.put(t, allBucket, allObjectKey(5), randomBytes(999, len(old.data)), map[string]string{"commit": "5b"})
	WriteFile(t, filepath.Join(c.files, "app.conf"), []byte("listen 9090\n"))
	WriteFile(t, c.grid, []byte("grid night 2\n"))
}

// backup runs the cluster backup and returns its run, which must have
// completed every component with a snapshot.
func (c *allCluster) backup() runStatus {
	c.t.Helper()
	r := c.e.Must("backup", "--config", c.config, "--node", "node1", "--json")
	id, _ := Summary(c.t, r.Stdout)["id"].(string)
	st := c.e.status("latest")
	if st.ID != id || st.Phase != "completed" || st.Finished == nil {
		c.t.Fatalf("run %s after backup %s: %+v", st.ID, id, st)
	}
	if len(st.Components) != len(allKinds) {
		c.t.Errorf("the run has %d components, want %d", len(st.Components), len(allKinds))
	}
	for _, comp := range st.Components {
		if comp.Phase != "completed" || comp.SnapshotID == nil || !clusterHex64.MatchString(*comp.SnapshotID) ||
			comp.Error != nil || comp.Kind != allKinds[comp.Name] || comp.Bytes <= 0 {
			c.t.Errorf("component %s: kind %s, phase %s, snapshot %v, bytes %d, error %v",
				comp.Name, comp.Kind, comp.Phase, comp.SnapshotID, comp.Bytes, comp.Error)
		}
	}
	if c.t.Failed() {
		c.t.FailNow()
	}
	return st
}

func (st runStatus) snapshotOf(t *testing.T, name string) string {
	t.Helper()
	c := st.Components[st.component(t, name)]
	if c.SnapshotID == nil {
		t.Fatalf("component %s has no snapshot", name)
	}
	return *c.SnapshotID
}

func TestClusterAllKindsNightly(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := newAllCluster(t)
	e := c.e
	t.Logf("servers started and filled in %s", time.Since(start).Round(time.Millisecond))

	run1 := c.backup()
	night1 := c.state()
	t.Logf("night 1 backed up at %s", time.Since(start).Round(time.Millisecond))

	c.nightTwo()
	night2 := c.state()
	for what, same := range map[string]bool{
		"postgres": night2.pgDump == night1.pgDump, "mysql": night2.my == night1.my,
		"etcd": night2.etcd == night1.etcd, "redis": night2.redis == night1.redis,
		"files": maps.Equal(night2.files, night1.files), "command": night2.grid == night1.grid,
	} {
		if same {
			t.Fatalf("night 2 did not change the %s component's data", what)
		}
	}
	run2 := c.backup()
	if run2.ID == run1.ID {
		t.Fatalf("night 2 reported run 1's id %s", run1.ID)
	}

	// Night 2 is incremental: the files and s3 components read only what
	// changed.
	wantCounts(t, "files component, night 2", s3SnapshotSummary(t, e, run2.snapshotOf(t, "config")), map[string]int64{
		"files_new": 0, "files_changed": 1, "files_unmodified": allRegularFiles(night1.files) - 1, "errors": 0})
	wantCounts(t, "s3 component, night 2", s3SnapshotSummary(t, e, run2.snapshotOf(t, "objects")), map[string]int64{
		"files_new": 0, "files_changed": 1, "files_unmodified": 19, "errors": 0})

	t.Run("directory", func(t *testing.T) { c.checkDirRestore(t, run1.ID, night1) })
	t.Run("live", func(t *testing.T) { c.checkLiveRestore(t, run1.ID, night1) })
	t.Logf("done in %s", time.Since(start).Round(time.Millisecond))
}

// checkDirRestore restores run into a directory: every component under
// DIR/COMPONENT/, as night 1 had it.
func (c *allCluster) checkDirRestore(t *testing.T, run string, night1 allState) {
	dir := filepath.Join(c.e.Dir, "restored-run1")
	c.e.Must("restore", run, "--target", dir)
	names := dirEntries(t, dir)
	if want := slices.Sorted(maps.Keys(allKinds)); !slices.Equal(names, want) {
		t.Errorf("the target holds %v, want %v", names, want)
	}

	allSameState(t, "files component", treeState(t, filepath.Join(dir, "config", c.files)), night1.files)
	for key, o := range night1.objects {
		data, err := os.ReadFile(filepath.Join(dir, "objects", key))
		if err != nil || !bytes.Equal(data, o.data) {
			t.Errorf("object %s restored as a file (%d bytes, %v) differs from the first night's (%d bytes)", key, len(data), err, len(o.data))
		}
	}
	if n := allRegularFiles(treeState(t, filepath.Join(dir, "objects"))); n != int64(len(night1.objects)) {
		t.Errorf("the s3 component restored %d files, want one per object, %d", n, len(night1.objects))
	}
	if got := readRestored(t, filepath.Join(dir, "grid", "grid")); got != night1.grid {
		t.Errorf("command output restored: %q, want %q", got, night1.grid)
	}
	for _, f := range []struct{ name, head string }{
		{"db/dump.sql", "-- PostgreSQL database dump"},
		{"acl/dump.sql", ""},
		{"meta/snapshot.db", ""},
		{"cache/dump.rdb", "REDIS"},
	} {
		data := readRestored(t, filepath.Join(dir, f.name))
		if len(data) < 100 || !strings.Contains(data[:min(len(data), 200)], f.head) {
			t.Errorf("%s: %d bytes starting %q", f.name, len(data), data[:min(len(data), 40)])
		}
	}
	if dump := readRestored(t, filepath.Join(dir, "db", "dump.sql")); !strings.Contains(dump, "CREATE VIEW public.item_names") {
		t.Error("the postgres dump does not create the view")
	}
	if dump := readRestored(t, filepath.Join(dir, "acl", "dump.sql")); !strings.Contains(dump, "CREATE TABLE `grants`") {
		t.Error("the mysql dump does not create table grants")
	}

	// The dumps are what the servers take back.
	if t.Failed() {
		return
	}
	etcd := testenv.RestoreEtcd(t, filepath.Join(dir, "meta", "snapshot.db"))
	allSame(t, "etcd from snapshot.db", allEtcdKeys(t, etcd.URL), night1.etcd)
	redis := testenv.RedisFromRDB(t, filepath.Join(dir, "cache", "dump.rdb"))
	allSame(t, "redis from dump.rdb", allRedisState(t, redis), night1.redis)
}

// checkLiveRestore restores run into new live targets, one component at a
// time, and compares each with night 1.
func (c *allCluster) checkLiveRestore(t *testing.T, run string, night1 allState) {
	e := c.e
	live := func(args ...string) Result {
		t.Helper()
		return e.Must(append([]string{"restore", run, "--to-live", "--config", c.config}, args...)...)
	}

	live("--component", "db", "--target-dsn", c.pg.DSN("shop_restored"))
	allSame(t, "postgres row counts", allPGCounts(t, c.pg, "shop_restored"), night1.pgCounts)
	allSame(t, "pg_dump of the restored database", c.pg.Dump(t, "shop_restored"), night1.pgDump)

	live("--component", "acl", "--target-dsn", c.my.DSN("acl_restored"))
	allSame(t, "mysql row counts and checksums", allMyState(t, c.my, "acl_restored"), night1.my)

	etcdDir := filepath.Join(c.e.Dir, "etcd-restored", "data")
	live("--component", "meta", "--target-data-dir", etcdDir)
	url := testenv.EtcdOn(t, etcdDir, "meta-restored", c.etcdPeer).URL
	allSame(t, "etcd on the restored data dir", allEtcdKeys(t, url), night1.etcd)

	// The component's own server still answers at its address: a live
	// restore there is refused, as that server would not read dump.rdb.
	redisDir := filepath.Join(c.e.Dir, "redis-restored")
	r := e.Fails(1, "restore", run, "--to-live", "--config", c.config, "--component", "cache", "--target-data-dir", redisDir)
	if !strings.Contains(r.Stderr, c.redis.Addr) {
		t.Errorf("the refusal does not name the running server's address:\n%s", r.Stderr)
	}
	if onDisk(filepath.Join(redisDir, "dump.rdb")) {
		t.Error("a refused redis restore wrote dump.rdb")
	}
	stopped := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	live("--component", "cache", "--target-data-dir", redisDir, "--target-address", stopped)
	redis := testenv.RedisFromRDB(t, filepath.Join(redisDir, "dump.rdb"))
	allSame(t, "redis from the restored dump.rdb", allRedisState(t, redis), night1.redis)

	live("--component", "objects", "--target-bucket", "restored")
	got := c.s3.objects(t, "restored")
	if !slices.Equal(slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(night1.objects))) {
		t.Errorf("the restored bucket holds %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(night1.objects)))
	}
	for key, w := range night1.objects {
		g := got[key]
		if !bytes.Equal(g.data, w.data) || g.contentType != w.contentType || !maps.Equal(g.meta, w.meta) {
			t.Errorf("restored object %s: %d bytes, %q, %v; want %d bytes, %q, %v",
				key, len(g.data), g.contentType, g.meta, len(w.data), w.contentType, w.meta)
		}
	}

	live("--component", "config", "--overwrite", "always")
	allSameState(t, "files component restored to its paths", treeState(t, c.files), night1.files)

	live("--component", "grid")
	if got := readRestored(t, c.gridOut); got != night1.grid {
		t.Errorf("the command's restore read %q, want %q", got, night1.grid)
	}
}

// TestClusterWrongPostgresDSN: a postgres component whose database does not
// exist fails with the server's message and no password; the files
// component beside it completes, and the post hook runs.
func TestClusterWrongPostgresDSN(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	e := NewRepo(t)
	e.Extra = append(e.Extra, "CAIRN_PG_BINDIR="+pg.BinDir)
	src := filepath.Join(e.Dir, "etc-app")
	for i := range 5 {
		WriteFile(t, filepath.Join(src, "sub", fmt.Sprintf("f%d.conf", i)), randomBytes(uint64(i), 1000+i))
	}
	const secret = "pw-Zq81xv"
	dsn := fmt.Sprintf("postgres://%s:%s@%s:%d/nope?sslmode=disable", pg.User, secret, pg.Host, pg.Port)
	marker := filepath.Join(e.Dir, "resumed")
	config := writeConfig(t, e, fmt.Sprintf(`cluster: prod
hooks:
  post: [["sh", "-c", "echo $CAIRN_RESULT > %s"]]
components:
  - name: db
    kind: postgres
    dsn: "%s"
  - name: config
    kind: files
    paths: [%s]
`, marker, dsn, src))

	r := e.Fails(1, "backup", "--config", config, "--node", "node1")
	if strings.Contains(r.Stderr, secret) || strings.Contains(r.Stdout, secret) {
		t.Errorf("the password reached the output:\n%s", r)
	}
	if got := readMarker(t, marker); got != "failed" {
		t.Errorf("post hook saw result %q, want failed", got)
	}
	st := e.status("latest")
	if st.Phase != "failed" {
		t.Errorf("run phase %s, want failed", st.Phase)
	}
	db := st.Components[st.component(t, "db")]
	if db.Phase != "failed" || db.SnapshotID != nil || db.Error == nil {
		t.Fatalf("component db: phase %s, snapshot %v, error %v", db.Phase, db.SnapshotID, db.Error)
	}
	if !strings.Contains(*db.Error, `database "nope" does not exist`) {
		t.Errorf("component db: the error does not carry the server's message: %s", *db.Error)
	}
	if strings.Contains(*db.Error, secret) {
		t.Errorf("component db: the password is in the error: %s", *db.Error)
	}
	files := st.Components[st.component(t, "config")]
	if files.Phase != "completed" || files.SnapshotID == nil {
		t.Fatalf("component config: phase %s, snapshot %v, error %v", files.Phase, files.SnapshotID, files.Error)
	}
	target := filepath.Join(e.Dir, "restored")
	e.Must("restore", *files.SnapshotID, "--target", target)
	sameTree(t, src, filepath.Join(target, src))
}

// allSame reports a difference between two descriptions of data.
func allSame(t *testing.T, what, got, want string) {
	t.Helper()
	if got == want {
		return
	}
	gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(gl), len(wl)) {
		var g, w string
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if g != w {
			t.Errorf("%s: not the first night's, first at line %d:\n got: %.200q\nwant: %.200q", what, i+1, g, w)
			return
		}
	}
}

// allSameState reports the differences between two treeState results.
func allSameState(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	var diffs []string
	for p, w := range want {
		if g, ok := got[p]; !ok {
			diffs = append(diffs, "missing "+p)
		} else if g != w {
			diffs = append(diffs, fmt.Sprintf("%s: %s, want %s", p, g, w))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, "extra "+p)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("%s: not the first night's:\n%s", what, strings.Join(diffs, "\n"))
	}
}

func allPGCounts(t *testing.T, srv *testenv.PostgresServer, db string) string {
	t.Helper()
	var b strings.Builder
	for _, table := range allPGTables {
		fmt.Fprintf(&b, "%s %s\n", table, pgExec(t, srv, db, "SELECT count(*) FROM "+table))
	}
	return b.String()
}

// myExec runs SQL in database db (none when empty) with the mariadb client
// and returns its tab-separated output without column names.
func myExec(t *testing.T, srv *testenv.MariaDBServer, db, sql string) string {
	t.Helper()
	args := srv.ClientArgs("--batch", "--skip-column-names", "-e", sql)
	if db != "" {
		args = append(args, db)
	}
	out, err := exec.Command(srv.Bin("mariadb"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb %s: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

// allMyState is each table's row count and CHECKSUM TABLE value.
func allMyState(t *testing.T, srv *testenv.MariaDBServer, db string) string {
	t.Helper()
	var b strings.Builder
	for _, table := range allMyTables {
		n := myExec(t, srv, db, "SELECT count(*) FROM "+table)
		// CHECKSUM TABLE prints db.table, then the checksum.
		_, sum, _ := strings.Cut(myExec(t, srv, db, "CHECKSUM TABLE "+table), "\t")
		fmt.Fprintf(&b, "%s rows %s checksum %s\n", table, n, sum)
	}
	fmt.Fprintf(&b, "admins %s\n", myExec(t, srv, db, "SELECT count(*) FROM users WHERE role = 'admin'"))
	return b.String()
}

func allEtcdClient(t *testing.T, url string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// allEtcdKeys returns every key and value, one per line.
func allEtcdKeys(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := allEtcdClient(t, url).Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%q=%q\n", kv.Key, kv.Value)
	}
	return b.String()
}

// allRedisState lists every key with its type and value, members of sets
// and fields of hashes sorted.
func allRedisState(t *testing.T, srv *testenv.RedisServer) string {
	t.Helper()
	cli := func(args ...string) []string {
		t.Helper()
		cmd := exec.Command(srv.Bin("redis-cli"), append([]string{"-h", "127.0.0.1", "-p", strconv.Itoa(srv.Port)}, args...)...)
		cmd.Env = append(os.Environ(), srv.Env()...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("redis-cli %v: %v", args, err)
		}
		s := strings.TrimSuffix(string(out), "\n")
		if s == "" {
			return nil
		}
		return strings.Split(s, "\n")
	}
	keys := cli("--scan")
	sort.Strings(keys)
	var b strings.Builder
	for _, key := range keys {
		typ := strings.Join(cli("TYPE", key), "")
		var val []string
		switch typ {
		case "string":
			val = cli("GET", key)
		case "list":
			val = cli("LRANGE", key, "0", "-1")
		case "zset":
			val = cli("ZRANGE", key, "0", "-1", "WITHSCORES")
		case "set":
			val = cli("SMEMBERS", key)
			sort.Strings(val)
		case "hash":
			kv := cli("HGETALL", key)
			for i := 0; i+1 < len(kv); i += 2 {
				val = append(val, kv[i]+"="+kv[i+1])
			}
			sort.Strings(val)
		default:
			t.Fatalf("redis key %s of type %q", key, typ)
		}
		fmt.Fprintf(&b, "%s %s %q\n", key, typ, val)
	}
	return b.String()
}

// allRegularFiles counts the regular files of a treeState result.
func allRegularFiles(state map[string]string) int64 {
	var n int64
	for _, s := range state {
		if strings.HasPrefix(s, "file ") {
			n++
		}
	}
	return n
}
