package cluster_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-backup/cairn/cluster"
)

// example is the cluster file of cluster.md, as written there.
const example = `cluster: prod
repository: s3:http://127.0.0.1:9000/backups/prod   # or a local path
password_file: /etc/cairn/password
hooks:                      # around the whole run
  pre:  [["pachctl", "enterprise", "pause"]]
  post: [["pachctl", "enterprise", "unpause"]]   # always runs, even after a failure
  timeout: 5m
components:
  - name: etcd
    kind: etcd
    endpoints: [http://10.0.0.1:2379]
    restore: {data_dir: /var/lib/etcd}          # what "restore to live" does
  - name: metadata-db
    kind: postgres
    dsn: "postgres://backup@db:5432/pachyderm?sslmode=disable"
    # all databases: kind: postgres with all: true (pg_dumpall)
  - name: acls
    kind: mysql
    dsn: "backup:secret@tcp(db:3306)/dbacl_iris"
  - name: config
    kind: files
    node: node1
    paths: [/etc/sysconfig/deephaven]
    exclude: ["*.tmp", "tmp/", "caches/", "run/", "jobs/"]
    hooks: {pre: [["dss", "stop"]], post: [["dss", "start"]]}
  - name: objects
    kind: s3
    endpoint: http://10.0.0.5:9000
    bucket: pach-data
    prefix: ""
  - name: grid-caches
    kind: command
    backup:  ["grid-export", "--caches", "*"]     # stdout is the component
    restore: ["grid-import"]                      # gets it on stdin
retention:                      # used by ` + "`cairn forget --config cluster.yaml`" + `
  keep_daily: 7
  keep_weekly: 4
`

func TestParseExample(t *testing.T) {
	c, err := cluster.Parse([]byte(example), "cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster != "prod" || c.Repository != "s3:http://127.0.0.1:9000/backups/prod" || c.PasswordFile != "/etc/cairn/password" {
		t.Errorf("top level: %+v", c)
	}
	if !slices.Equal(c.Hooks.Pre[0], []string{"pachctl", "enterprise", "pause"}) ||
		!slices.Equal(c.Hooks.Post[0], []string{"pachctl", "enterprise", "unpause"}) ||
		time.Duration(c.Hooks.Timeout) != 5*time.Minute {
		t.Errorf("hooks: %+v", c.Hooks)
	}
	if c.RunTimeoutOr() != 6*time.Hour {
		t.Errorf("run timeout %s, want the 6h default", c.RunTimeoutOr())
	}
	var names []string
	for _, comp := range c.Components {
		names = append(names, comp.Name+"/"+comp.Kind)
	}
	want := []string{"etcd/etcd", "metadata-db/postgres", "acls/mysql", "config/files", "objects/s3", "grid-caches/command"}
	if !slices.Equal(names, want) {
		t.Fatalf("components %v, want %v", names, want)
	}
	etcd, pg, files, s3, cmd := c.Components[0], c.Components[1], c.Components[3], c.Components[4], c.Components[5]
	if etcd.Restore.DataDir != "/var/lib/etcd" || !slices.Equal(etcd.Endpoints, []string{"http://10.0.0.1:2379"}) {
		t.Errorf("etcd: %+v", etcd)
	}
	if files.Node != "node1" || !slices.Equal(files.Exclude, []string{"*.tmp", "tmp/", "caches/", "run/", "jobs/"}) ||
		!slices.Equal(files.Hooks.Pre[0], []string{"dss", "stop"}) {
		t.Errorf("files: %+v", files)
	}
	if s3.Bucket != "pach-data" || s3.Endpoint != "http://10.0.0.5:9000" {
		t.Errorf("s3: %+v", s3)
	}
	if !slices.Equal(cmd.Backup, []string{"grid-export", "--caches", "*"}) || !slices.Equal(cmd.Restore.Command, []string{"grid-import"}) {
		t.Errorf("command: %+v", cmd)
	}
	spec, err := pg.Spec()
	if err != nil {
		t.Fatal(err)
	}
	if spec.Kind != "postgres" || spec.DSN != pg.DSN || spec.Format != "plain" || spec.Name != "metadata-db" {
		t.Errorf("postgres spec: %+v", spec)
	}
	p, err := c.Retention.Policy()
	if err != nil || p.Daily != 7 || p.Weekly != 4 || p.Last != 0 {
		t.Errorf("retention policy %+v, %v", p, err)
	}
}

func TestParseEveryKey(t *testing.T) {
	const all = `cluster: c1
repository: /srv/repo
password_env: CAIRN_TEST_PW
run_timeout: 90m
hooks: {pre: [[a]], post: [[b, x]], timeout: 30s}
components:
  - {name: f, kind: files, node: n1, paths: [/a, /b], exclude: ["*.o"], one_file_system: true}
  - {name: e, kind: etcd, endpoints: [https://e:2379], cert_file: /c.pem, key_file: /k.pem, ca_file: /ca.pem,
     restore: {data_dir: /d, name: m1, initial_cluster: "m1=http://e:2380", initial_cluster_token: t, initial_advertise_peer_urls: "http://e:2380"}}
  - {name: p, kind: postgres, dsn: "postgres://s/", all: true, format: custom, restore: {dsn: "postgres://t/"}}
  - {name: m, kind: mysql, dsn: "u@tcp(h)/d"}
  - {name: s, kind: s3, endpoint: "http://m:9000", bucket: b, prefix: p/, access_key_env: AK, secret_key_env: SK,
     restore: {endpoint: "http://n:9000", bucket: b2, prefix: q/}}
  - {name: r, kind: redis, address: "r:6379", password_env: RPW, restore: {data_dir: /var/lib/redis, address: "r2:6379"}}
  - {name: c, kind: command, backup: [dump], restore: [load, -]}
retention: {keep_last: 1, keep_hourly: 2, keep_daily: 3, keep_weekly: 4, keep_monthly: 5, keep_yearly: -1,
  keep_within: 2d3h, keep_tag: ["keep", "a,b"]}
`
	c, err := cluster.Parse([]byte(all), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.RunTimeoutOr() != 90*time.Minute || time.Duration(c.Hooks.Timeout) != 30*time.Second {
		t.Errorf("durations: %v %v", c.RunTimeoutOr(), c.Hooks.Timeout)
	}
	f, e, p := c.Components[0], c.Components[1], c.Components[2]
	if !f.OneFileSystem || e.CAFile != "/ca.pem" || e.Restore.InitialClusterToken != "t" || !p.All || p.Format != "custom" || p.Restore.DSN != "postgres://t/" {
		t.Errorf("components: %+v %+v %+v", f, e, p)
	}
	pol, err := c.Retention.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if pol.Yearly != -1 || pol.Within.Days != 2 || pol.Within.Hours != 3 || len(pol.Tags) != 2 || !slices.Equal(pol.Tags[1], []string{"a", "b"}) {
		t.Errorf("policy %+v", pol)
	}
}

// parseErr parses src and returns the error's text, failing when it parses.
func parseErr(t *testing.T, src string) string {
	t.Helper()
	_, err := cluster.Parse([]byte(src), "/etc/cairn/cluster.yaml")
	if err == nil {
		t.Fatalf("parsed without an error:\n%s", src)
	}
	return err.Error()
}

func wantIn(t *testing.T, msg string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("error %q does not contain %q", msg, p)
		}
	}
}

const minimal = `cluster: prod
components:
  - name: cfg
    kind: files
    paths: [/etc/app]
`

func TestUnknownKeys(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"top level", "cluster: prod\nretension: {keep_daily: 7}\n" + minimal[len("cluster: prod\n"):],
			[]string{"cluster.yaml: line 2", `unknown key "retension"`}},
		{"component", minimal + "    excludes: [x]\n", []string{"line 6", `unknown key "excludes"`, "component"}},
		{"hooks", minimal + "hooks: {pre: [[a]], timout: 5m}\n", []string{"line 6", `"timout"`}},
		{"restore", `cluster: prod
components:
  - name: db
    kind: postgres
    dsn: x
    restore:
      dsn: y
      database: z
`, []string{"line 8", "database"}},
		{"retention", minimal + "retention:\n  keep_dayly: 7\n", []string{"line 7", `"keep_dayly"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantIn(t, parseErr(t, tc.src), tc.want...)
		})
	}
}

func TestWrongTypes(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"string for a list", strings.Replace(minimal, "[/etc/app]", "/etc/app", 1),
			[]string{"line 5", "want a list of strings, got a string"}},
		{"word for a number", minimal + "retention: {keep_daily: seven}\n", []string{"line 6", "want a whole number"}},
		{"list for a string", "cluster: [a, b]\n" + minimal[len("cluster: prod\n"):], []string{"line 1", "want a string, got a list"}},
		{"bad duration", minimal + "run_timeout: 6 hours\n", []string{"line 6", "duration"}},
		{"hook not a list of lists", minimal + "hooks: {pre: [stop]}\n", []string{"line 6"}},
		{"yaml syntax", "cluster: prod\ncomponents:\n  - name: a\n   kind: files\n", []string{"line 2", "did not find expected"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantIn(t, parseErr(t, tc.src), tc.want...)
		})
	}
}

func TestValuesNotEchoed(t *testing.T) {
	// A DSN can hold a password: a type error must not repeat it.
	msg := parseErr(t, minimal+"  - name: db\n    kind: mysql\n    dsn: {user: u, password: hunter22}\n")
	wantIn(t, msg, "line 8", "want a string, got a mapping")
	if strings.Contains(msg, "hunter22") {
		t.Errorf("error repeats the value: %s", msg)
	}
}

func TestMissingAndInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"no cluster", "components:\n  - {name: a, kind: command, backup: [x]}\n", []string{"no cluster name"}},
		{"no components", "cluster: prod\n", []string{"no components"}},
		{"no kind", "cluster: p\ncomponents:\n  - name: a\n", []string{"line 3", "component a: no kind"}},
		{"unknown kind", "cluster: p\ncomponents:\n  - {name: a, kind: oracle}\n", []string{"line 3", `unknown kind "oracle"`, "postgres"}},
		{"no name", "cluster: p\ncomponents:\n  - {kind: command, backup: [x]}\n", []string{"line 3", "no name"}},
		{"bad name", "cluster: p\ncomponents:\n  - {name: a/b, kind: command, backup: [x]}\n", []string{"line 3", "name"}},
		{"files without paths", "cluster: p\ncomponents:\n  - {name: a, kind: files}\n", []string{"line 3", "needs paths"}},
		{"relative path", "cluster: p\ncomponents:\n  - {name: a, kind: files, paths: [etc]}\n", []string{"not absolute"}},
		{"bad exclude", "cluster: p\ncomponents:\n  - {name: a, kind: files, paths: [/e], exclude: [\"[ab\"]}\n", []string{"line 3", "exclude"}},
		{"etcd without endpoints", "cluster: p\ncomponents:\n  - {name: a, kind: etcd}\n", []string{"needs endpoints"}},
		{"etcd on a unix socket", "cluster: p\ncomponents:\n  - {name: a, kind: etcd, endpoints: [\"10.0.0.1:2379\", \"unix://localhost:2379\"]}\n", []string{"endpoint unix://localhost:2379: only http://, https:// and host:port"}},
		{"etcd half TLS", "cluster: p\ncomponents:\n  - {name: a, kind: etcd, endpoints: [x], cert_file: /c}\n", []string{"cert_file and key_file"}},
		{"postgres without dsn", "cluster: p\ncomponents:\n  - {name: a, kind: postgres}\n", []string{"needs dsn"}},
		{"postgres format", "cluster: p\ncomponents:\n  - {name: a, kind: postgres, dsn: x, format: tar}\n", []string{`format "tar"`}},
		{"mysql without dsn", "cluster: p\ncomponents:\n  - {name: a, kind: mysql}\n", []string{"needs dsn"}},
		{"s3 without bucket", "cluster: p\ncomponents:\n  - {name: a, kind: s3, endpoint: x}\n", []string{"needs bucket"}},
		{"redis without address", "cluster: p\ncomponents:\n  - {name: a, kind: redis}\n", []string{"needs address"}},
		{"command without backup", "cluster: p\ncomponents:\n  - {name: a, kind: command, restore: [x]}\n", []string{"needs backup"}},
		{"key of another kind", "cluster: p\ncomponents:\n  - name: a\n    kind: files\n    paths: [/x]\n    dsn: y\n",
			[]string{"line 6", "key dsn does not apply to kind files"}},
		{"restore list for etcd", "cluster: p\ncomponents:\n  - {name: a, kind: etcd, endpoints: [x], restore: [y]}\n", []string{"restore must be a mapping"}},
		{"restore mapping for command", "cluster: p\ncomponents:\n  - {name: a, kind: command, backup: [x], restore: {dsn: y}}\n", []string{"argv list"}},
		{"empty hook", "cluster: p\nhooks: {pre: [[]]}\ncomponents:\n  - {name: a, kind: command, backup: [x]}\n", []string{"pre hook 1: empty command"}},
		{"two passwords", "cluster: p\npassword_file: /f\npassword_env: E\ncomponents:\n  - {name: a, kind: command, backup: [x]}\n", []string{"mutually exclusive"}},
		{"same name, same node", "cluster: p\ncomponents:\n  - {name: a, kind: command, backup: [x], node: n1}\n  - {name: a, kind: command, backup: [y], node: n1}\n",
			[]string{"line 4", "already defined at line 3"}},
		{"same name, one without a node", "cluster: p\ncomponents:\n  - {name: a, kind: command, backup: [x]}\n  - {name: a, kind: command, backup: [y], node: n1}\n",
			[]string{"line 4", "already defined at line 3", "every node"}},
		{"bad retention", "cluster: p\ncomponents:\n  - {name: a, kind: command, backup: [x]}\nretention: {keep_within: 3w}\n", []string{"keep_within"}},
		{"two documents", minimal + "---\ncluster: q\n", []string{"line 6", "second YAML document"}},
		{"empty", "", []string{"empty"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantIn(t, parseErr(t, tc.src), tc.want...)
		})
	}
}

func TestEveryProblemReported(t *testing.T) {
	msg := parseErr(t, `cluster: p
components:
  - {name: a, kind: files}
  - {name: b, kind: postgres}
  - {name: c, kind: nosuch}
`)
	wantIn(t, msg, "line 3: component a", "line 4: component b", "line 5: component c")
	if n := strings.Count(msg, "\n") + 1; n != 3 {
		t.Errorf("%d lines, want one per problem:\n%s", n, msg)
	}
}

func TestSameNameOnTwoNodes(t *testing.T) {
	c, err := cluster.Parse([]byte(`cluster: p
components:
  - {name: config, kind: files, node: n1, paths: [/etc/app]}
  - {name: config, kind: files, node: n2, paths: [/etc/app]}
  - {name: db, kind: command, backup: [dump]}
`), "c.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		node  string
		globs []string
		want  []string
	}{
		{"n1", nil, []string{"config@n1", "db@"}},
		{"n2", nil, []string{"config@n2", "db@"}},
		{"n3", nil, []string{"db@"}},
		{"n2", []string{"conf*"}, []string{"config@n2"}},
		{"n1", []string{"nothing", "d?"}, []string{"db@"}},
	} {
		sel, err := c.Select(tc.node, tc.globs)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, comp := range sel {
			got = append(got, comp.Name+"@"+comp.Node)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("Select(%s, %v) = %v, want %v", tc.node, tc.globs, got, tc.want)
		}
	}
	if _, err := c.Select("n3", []string{"config"}); err == nil || !strings.Contains(err.Error(), "node n3") {
		t.Errorf("selecting another node's component: %v", err)
	}
	if _, err := c.Select("n1", []string{"[x"}); err == nil {
		t.Error("invalid glob accepted")
	}
}

func TestSecrets(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte("s3cret-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CAIRN_TEST_REPO_PW", "s3cret-from-env")
	t.Setenv("CAIRN_TEST_AK", "AKIDEXAMPLE")
	t.Setenv("CAIRN_TEST_SK", "secret-key-value")

	parse := func(src string) *cluster.Config {
		t.Helper()
		c, err := cluster.Parse([]byte(src), "c.yaml")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := parse("cluster: p\npassword_file: " + pwFile + "\n" + `components:
  - {name: r, kind: redis, address: "h:6379", password_file: ` + pwFile + `}
  - {name: s, kind: s3, bucket: b, access_key_env: CAIRN_TEST_AK, secret_key_env: CAIRN_TEST_SK}
`)
	pw, ok, err := c.Password()
	if err != nil || !ok || string(pw) != "s3cret-from-file" {
		t.Errorf("password from file: %q %v %v", pw, ok, err)
	}
	spec, err := c.Components[0].Spec()
	if err != nil || spec.Password != "s3cret-from-file" || spec.Address != "h:6379" {
		t.Errorf("redis spec: %+v %v", spec, err)
	}
	spec, err = c.Components[1].Spec()
	if err != nil || spec.AccessKey != "AKIDEXAMPLE" || spec.SecretKey != "secret-key-value" {
		t.Errorf("s3 spec: %+v %v", spec, err)
	}

	c = parse(`cluster: p
password_env: CAIRN_TEST_REPO_PW
components:
  - {name: r, kind: redis, address: "h:6379", password_env: CAIRN_TEST_REPO_PW}
`)
	if pw, ok, err := c.Password(); err != nil || !ok || string(pw) != "s3cret-from-env" {
		t.Errorf("password from env: %q %v %v", pw, ok, err)
	}
	if spec, err := c.Components[0].Spec(); err != nil || spec.Password != "s3cret-from-env" {
		t.Errorf("redis password from env: %+v %v", spec, err)
	}

	// Read when used, not when parsed: a variable unset by then is an
	// error naming the variable.
	t.Setenv("CAIRN_TEST_REPO_PW", "")
	_, _, err = c.Password()
	wantIn(t, err.Error(), "CAIRN_TEST_REPO_PW", "not set")
	_, err = c.Components[0].Spec()
	wantIn(t, err.Error(), "CAIRN_TEST_REPO_PW")

	if _, ok, err := parse(minimal).Password(); ok || err != nil {
		t.Errorf("no password in the file: ok %v, %v", ok, err)
	}
	if err := os.WriteFile(pwFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = parse("cluster: p\npassword_file: " + pwFile + "\n" + minimal[len("cluster: prod\n"):]).Password()
	wantIn(t, err.Error(), "empty")
}
