package source_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/source"
	"github.com/cairn-backup/cairn/tests/testenv"
)

// pgPassword is put into every DSN. The test servers trust local
// connections and ignore it, but it must never show on a command line or
// in an error.
const pgPassword = "Pg-s3cret-pw"

func pgDSN(srv *testenv.PostgresServer, db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", srv.User, pgPassword, srv.Host, srv.Port, db)
}

// psql runs sql in database db and returns the unaligned output.
func psql(t *testing.T, srv *testenv.PostgresServer, db, sql string) string {
	t.Helper()
	cmd := exec.Command(srv.Bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db)
	cmd.Env = append(os.Environ(), srv.Env()...)
	cmd.Stdin = strings.NewReader(sql)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql %s: %v\n%s", db, err, out)
	}
	return strings.TrimSpace(string(out))
}

const pgSchema = `
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, note text, data bytea, created timestamptz DEFAULT now());
INSERT INTO items (name, note, data)
  SELECT 'item ' || g, repeat('x', 100) || E'\ttab\nnewline \\ ü', decode(md5(g::text), 'hex') FROM generate_series(1, 20000) g;
CREATE TABLE "Mixed Case" (k text PRIMARY KEY, v int);
INSERT INTO "Mixed Case" SELECT 'k' || g, g FROM generate_series(1, 50) g;
CREATE TABLE empty_one (x int);
CREATE SCHEMA billing;
CREATE TABLE billing.invoices (id int PRIMARY KEY, item_id int REFERENCES items(id), amount numeric(10,2));
INSERT INTO billing.invoices SELECT g, g, g * 1.25 FROM generate_series(1, 300) g;
CREATE VIEW item_names AS SELECT id, name FROM items;
CREATE FUNCTION add_one(int) RETURNS int LANGUAGE sql AS 'SELECT $1 + 1';
`

// pgCounts returns the row count of each table of the schema above.
func pgCounts(t *testing.T, srv *testenv.PostgresServer, db string) string {
	t.Helper()
	return psql(t, srv, db, `SELECT 'items', count(*) FROM items UNION ALL
SELECT 'Mixed Case', count(*) FROM "Mixed Case" UNION ALL
SELECT 'empty_one', count(*) FROM empty_one UNION ALL
SELECT 'billing.invoices', count(*) FROM billing.invoices;`)
}

// childCommandLines returns the command lines and environments of this
// process's running children.
func childCommandLines(t *testing.T) (cmdlines, environs []string) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		stat, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split
		// after its closing parenthesis.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		dir := filepath.Dir(p)
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		environ, _ := os.ReadFile(filepath.Join(dir, "environ"))
		cmdlines = append(cmdlines, string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		environs = append(environs, string(environ))
	}
	return cmdlines, environs
}

// checkPasswordOnlyInEnvironment opens s and checks, while its producer
// runs, that password is in the producer's environment and not on its
// command line.
func checkPasswordOnlyInEnvironment(t *testing.T, s source.Spec, tool, password string) {
	t.Helper()
	_, rc, err := source.Open(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	// Nothing is read yet, so a dump bigger than a pipe buffer keeps the
	// producer running.
	cmdlines, environs := childCommandLines(t)
	found := false
	for i, c := range cmdlines {
		if !strings.Contains(c, tool) {
			continue
		}
		found = true
		if strings.Contains(c, password) {
			t.Errorf("password on the command line: %s", c)
		}
		if !strings.Contains(environs[i], password) {
			t.Errorf("%s did not get the password in its environment", tool)
		}
	}
	if !found {
		t.Errorf("no running %s among the children: %q", tool, cmdlines)
	}
}

func TestPostgresRoundTrip(t *testing.T) {
	srv := testenv.Postgres(t)
	t.Setenv("CAIRN_PG_BINDIR", srv.BinDir)
	psql(t, srv, "postgres", "CREATE DATABASE appdb;")
	psql(t, srv, "appdb", pgSchema)
	want := pgCounts(t, srv, "appdb")
	wantDump := srv.Dump(t, "appdb")

	for _, tc := range []struct{ format, file string }{
		{"plain", "dump.sql"},
		{"custom", "dump.pgdump"},
	} {
		t.Run(tc.format, func(t *testing.T) {
			spec := source.Spec{Kind: "postgres", Name: "db", DSN: pgDSN(srv, "appdb"), Format: tc.format}
			checkPasswordOnlyInEnvironment(t, spec, "pg_dump", pgPassword)
			name, data := mustDump(t, spec)
			if name != tc.file {
				t.Errorf("file name %q, want %q", name, tc.file)
			}
			// The custom format's magic, or SQL (never compressed).
			if custom := bytes.HasPrefix(data, []byte("PGDMP")); custom != (tc.format == "custom") ||
				!custom && !bytes.Contains(data, []byte("CREATE TABLE public.items")) {
				t.Errorf("a %s dump that starts with %q", tc.format, data[:min(60, len(data))])
			}

			target := "restored_" + tc.format
			restore := func(overwrite bool) error {
				return source.RestoreLive(t.Context(), spec,
					source.Target{DSN: pgDSN(srv, target), Overwrite: overwrite}, bytes.NewReader(data))
			}
			if err := restore(false); err != nil {
				t.Fatal(err)
			}
			if got := pgCounts(t, srv, target); got != want {
				t.Errorf("restored row counts:\n%s\nwant:\n%s", got, want)
			}
			if got := srv.Dump(t, target); got != wantDump {
				t.Errorf("pg_dump of the restored database differs from the original's")
			}

			// The database now holds tables: a second restore is
			// refused and changes nothing, unless overwriting.
			psql(t, srv, target, "INSERT INTO items (name) VALUES ('added after the restore');")
			err := restore(false)
			if err == nil || !strings.Contains(err.Error(), "not empty") {
				t.Errorf("restore into a database with tables: %v", err)
			}
			if got := psql(t, srv, target, "SELECT count(*) FROM items WHERE name = 'added after the restore';"); got != "1" {
				t.Errorf("the refused restore changed the database")
			}
			if err := restore(true); err != nil {
				t.Fatalf("overwrite: %v", err)
			}
			if got := srv.Dump(t, target); got != wantDump {
				t.Errorf("after overwriting, pg_dump of the database differs from the original's")
			}
		})
	}
}

func TestPostgresRestoreIntoExistingEmptyDatabase(t *testing.T) {
	srv := testenv.Postgres(t)
	t.Setenv("CAIRN_PG_BINDIR", srv.BinDir)
	psql(t, srv, "postgres", "CREATE DATABASE appdb; CREATE DATABASE ready;")
	psql(t, srv, "appdb", pgSchema)
	spec := source.Spec{Kind: "postgres", Name: "db", DSN: "host=127.0.0.1 port=" + strconv.Itoa(srv.Port) +
		" user=postgres password='" + pgPassword + "' dbname=appdb"}
	_, data := mustDump(t, spec)
	err := source.RestoreLive(t.Context(), spec, source.Target{DSN: pgDSN(srv, "ready")}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pgCounts(t, srv, "ready"), pgCounts(t, srv, "appdb"); got != want {
		t.Errorf("restored row counts:\n%s\nwant:\n%s", got, want)
	}
}

func TestPostgresDumpAll(t *testing.T) {
	srv := testenv.Postgres(t)
	t.Setenv("CAIRN_PG_BINDIR", srv.BinDir)
	psql(t, srv, "postgres", "CREATE ROLE app LOGIN; CREATE DATABASE appdb OWNER app;")
	psql(t, srv, "appdb", pgSchema+"ALTER TABLE items OWNER TO app;")
	want := pgCounts(t, srv, "appdb")
	wantDump := srv.Dump(t, "appdb")

	spec := source.Spec{Kind: "postgres", Name: "cluster", DSN: pgDSN(srv, "postgres"), All: true}
	name, data := mustDump(t, spec)
	if name != "dump.sql" || !bytes.Contains(data, []byte("CREATE ROLE app;")) {
		t.Fatalf("%s: %d bytes without the role", name, len(data))
	}

	dst := testenv.Postgres(t)
	target := source.Target{DSN: pgDSN(dst, "postgres")}
	if err := source.RestoreLive(t.Context(), spec, target, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if got := pgCounts(t, dst, "appdb"); got != want {
		t.Errorf("restored row counts:\n%s\nwant:\n%s", got, want)
	}
	if got := dst.Dump(t, "appdb"); got != wantDump {
		t.Errorf("pg_dump of the restored database differs from the original's")
	}
	if got := psql(t, dst, "postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'appdb';"); got != "app" {
		t.Errorf("restored database owner %q, want app", got)
	}

	err := source.RestoreLive(t.Context(), spec, target, bytes.NewReader(data))
	if err == nil || !strings.Contains(err.Error(), "appdb") {
		t.Errorf("restore into a server that has the databases: %v", err)
	}
}

func TestPostgresErrors(t *testing.T) {
	srv := testenv.Postgres(t)
	t.Setenv("CAIRN_PG_BINDIR", srv.BinDir)

	_, _, err := dump(t, source.Spec{Kind: "postgres", Name: "db", DSN: pgDSN(srv, "nope")})
	if err == nil || !strings.Contains(err.Error(), `database "nope" does not exist`) {
		t.Errorf("dump of a missing database: %v", err)
	} else if strings.Contains(err.Error(), pgPassword) {
		t.Errorf("the error shows the password: %v", err)
	}

	// A dump that does not replay: the restore fails with psql's
	// message, and leaves the new database empty.
	bad := "CREATE TABLE t (x int);\nINSERT INTO t VALUES (1);\nSELECT * FROM missing_table;\n"
	spec := source.Spec{Kind: "postgres", Name: "db"}
	err = source.RestoreLive(t.Context(), spec, source.Target{DSN: pgDSN(srv, "broken")}, strings.NewReader(bad))
	if err == nil || !strings.Contains(err.Error(), `relation "missing_table" does not exist`) {
		t.Errorf("restore of a bad dump: %v", err)
	} else if strings.Contains(err.Error(), pgPassword) {
		t.Errorf("the error shows the password: %v", err)
	}
	if got := psql(t, srv, "broken", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public';"); got != "0" {
		t.Errorf("the failed restore left %s tables", got)
	}

	// Rows that the dump holds but the database lost are found by the
	// count after the restore.
	lossy := "CREATE TABLE t (x int);\nCOPY public.t (x) FROM stdin;\n1\n2\n3\n\\.\nDELETE FROM t WHERE x = 2;\n"
	err = source.RestoreLive(t.Context(), spec, source.Target{DSN: pgDSN(srv, "lossy")}, strings.NewReader(lossy))
	if err == nil || !strings.Contains(err.Error(), "public.t has 2 rows after the restore, the dump had 3") {
		t.Errorf("restore that loses a row: %v", err)
	}
}
