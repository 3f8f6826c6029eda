package source

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// openPostgres runs pg_dump, or pg_dumpall for s.All. The dump is never
// compressed by pg_dump (plain SQL, or the custom format with -Z0), so that
// the chunks of one night's dump dedupe against the last one's.
func openPostgres(ctx context.Context, s Spec) (string, io.ReadCloser, error) {
	c, err := parsePgDSN(s.DSN)
	if err != nil {
		return "", nil, err
	}
	name, file := "pg_dump", "dump.sql"
	var args []string
	switch {
	case s.All && s.Format != "" && s.Format != "plain":
		return "", nil, fmt.Errorf("postgres format %q: pg_dumpall writes plain SQL only", s.Format)
	case s.All:
		name = "pg_dumpall"
	case s.Format == "" || s.Format == "plain":
	case s.Format == "custom":
		args, file = []string{"--format=custom", "--compress=0"}, "dump.pgdump"
	default:
		return "", nil, fmt.Errorf("postgres format %q: want plain or custom", s.Format)
	}
	t, err := pgTool(name, c, args...)
	if err != nil {
		return "", nil, err
	}
	rc, err := t.stream(ctx)
	if err != nil {
		return "", nil, err
	}
	return file, rc, nil
}

// restorePostgres replays a dump into the database (or with s.All, the
// server) of t.DSN. The dump's own first bytes say which format it is.
func restorePostgres(ctx context.Context, s Spec, t Target, r io.Reader) error {
	c, err := parsePgDSN(t.DSN)
	if err != nil {
		return err
	}
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(5)
	custom := string(head) == "PGDMP"
	if s.All {
		if custom {
			return errors.New("a custom-format archive cannot be a whole-server dump")
		}
		return restorePgAll(ctx, c, t.Overwrite, br)
	}
	db := c.get("dbname")
	if db == "" {
		return errors.New("the target DSN names no database")
	}
	if err := pgPrepareDB(ctx, c, db, t.Overwrite); err != nil {
		return err
	}
	// One transaction: a restore that fails leaves the database empty,
	// ready for another attempt.
	if custom {
		tl, err := pgTool("pg_restore", c, "--exit-on-error", "--single-transaction")
		if err != nil {
			return err
		}
		return tl.feed(ctx, br)
	}
	tl, err := pgTool("psql", c, "--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1")
	if err != nil {
		return err
	}
	var counts copyCounter
	if err := tl.feed(ctx, io.TeeReader(br, &counts)); err != nil {
		return err
	}
	return pgVerify(ctx, c, &counts)
}

// restorePgAll replays pg_dumpall output into the server of c. It does
// not stop at the first error, because the dump creates the role it
// connects as, which exists already; errors other than an existing role
// are reported afterwards.
func restorePgAll(ctx context.Context, c *pgConn, overwrite bool, r io.Reader) error {
	if c.get("dbname") == "" {
		c = c.withDB("postgres")
	}
	if !overwrite {
		out, err := pgQuery(ctx, c, nil,
			`SELECT string_agg(quote_ident(datname), ', ' ORDER BY datname) FROM pg_database WHERE datname NOT IN ('postgres', 'template0', 'template1');`)
		if err != nil {
			return err
		}
		if out != "" {
			return fmt.Errorf("the target server is not new: it has databases %s", out)
		}
	}
	tl, err := pgTool("psql", c, "--no-psqlrc", "--quiet")
	if err != nil {
		return err
	}
	tl.errLines = func(line string) bool {
		if !strings.Contains(line, "ERROR:") {
			return false
		}
		_, msg, _ := strings.Cut(line, "ERROR:")
		msg = strings.TrimSpace(msg)
		return !(strings.HasPrefix(msg, "role ") && strings.HasSuffix(msg, " already exists"))
	}
	return tl.feed(ctx, r)
}

// pgPrepareDB makes sure database db exists and is empty: it creates a
// missing one, and refuses one that holds objects, unless overwrite, which
// drops it and creates it again with the same owner.
func pgPrepareDB(ctx context.Context, c *pgConn, db string, overwrite bool) error {
	// Connect elsewhere to create or drop db: to postgres, the database
	// every server has, or to template1 when db is postgres itself.
	adminDB := "postgres"
	if db == adminDB {
		adminDB = "template1"
	}
	admin := c.withDB(adminDB)
	vars := []string{"db=" + db}
	exists, err := pgQuery(ctx, admin, vars, `SELECT count(*) FROM pg_database WHERE datname = :'db';`)
	if err != nil {
		return err
	}
	// template0: a restore wants a database without whatever was added
	// to template1.
	if exists == "0" {
		_, err := pgQuery(ctx, admin, vars, `CREATE DATABASE :"db" TEMPLATE template0;`)
		return err
	}
	objects, err := pgQuery(ctx, c, nil, pgObjectsQuery)
	if err != nil {
		return err
	}
	if objects == "0" {
		return nil
	}
	if !overwrite {
		return fmt.Errorf("database %q is not empty (%s tables, functions, types or schemas); restore into a new database or allow overwriting", db, objects)
	}
	owner, err := pgQuery(ctx, admin, vars, `SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :'db';`)
	if err != nil {
		return err
	}
	vars = append(vars, "owner="+owner)
	_, err = pgQuery(ctx, admin, vars, `DROP DATABASE :"db";`+"\n"+`CREATE DATABASE :"db" OWNER :"owner" TEMPLATE template0;`)
	return err
}

// pgObjectsQuery counts what a restore could collide with: relations,
// functions, types of their own, and schemas other than public.
const pgObjectsQuery = `
WITH ns AS (
  SELECT oid, nspname FROM pg_namespace
  WHERE nspname NOT IN ('pg_catalog', 'information_schema')
    AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp\_%'
)
SELECT (SELECT count(*) FROM pg_class JOIN ns ON ns.oid = relnamespace)
     + (SELECT count(*) FROM pg_proc JOIN ns ON ns.oid = pronamespace)
     + (SELECT count(*) FROM pg_type JOIN ns ON ns.oid = typnamespace WHERE typrelid = 0 AND typelem = 0)
     + (SELECT count(*) FROM ns WHERE nspname <> 'public');`

// pgVerify compares the rows each table got with the rows the dump held.
func pgVerify(ctx context.Context, c *pgConn, counts *copyCounter) error {
	if counts.unsure || len(counts.tables) == 0 {
		return nil
	}
	var q strings.Builder
	for _, t := range counts.tables {
		fmt.Fprintf(&q, "SELECT count(*) FROM ONLY %s;\n", t)
	}
	out, err := pgQuery(ctx, c, nil, q.String())
	if err != nil {
		return fmt.Errorf("count restored rows: %w", err)
	}
	got := strings.Fields(out)
	if len(got) != len(counts.tables) {
		return fmt.Errorf("count restored rows: %d answers for %d tables", len(got), len(counts.tables))
	}
	for i, t := range counts.tables {
		n, err := strconv.ParseInt(got[i], 10, 64)
		if err != nil {
			return fmt.Errorf("count rows of %s: %q", t, got[i])
		}
		if n != counts.rows[i] {
			return fmt.Errorf("table %s has %d rows after the restore, the dump had %d", t, n, counts.rows[i])
		}
	}
	return nil
}

// pgQuery runs sql with psql and returns its unaligned, trimmed output.
// vars become psql variables, for :'name' and :"name" in sql.
func pgQuery(ctx context.Context, c *pgConn, vars []string, sql string) (string, error) {
	args := []string{"--no-psqlrc", "--quiet", "--no-align", "--tuples-only", "--set=ON_ERROR_STOP=1"}
	for _, v := range vars {
		args = append(args, "--set="+v)
	}
	t, err := pgTool("psql", c, args...)
	if err != nil {
		return "", err
	}
	out, err := t.output(ctx, sql)
	return strings.TrimSpace(out), err
}

// pgTool prepares a PostgreSQL client tool for connection c.
func pgTool(name string, c *pgConn, args ...string) (*tool, error) {
	path, err := pgBinary(name)
	if err != nil {
		return nil, err
	}
	return &tool{
		name:    name,
		path:    path,
		args:    append(args, c.args()...),
		env:     c.env(),
		secrets: []string{c.password},
	}, nil
}

// pgBinary finds a PostgreSQL tool: in $CAIRN_PG_BINDIR, else in the
// newest /usr/lib/postgresql/*/bin (Debian keeps the versioned tools
// there, and its /usr/bin ones are wrappers), else in PATH. A newer
// pg_dump reads older servers, not the other way round.
func pgBinary(name string) (string, error) {
	if dir := os.Getenv("CAIRN_PG_BINDIR"); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s not found in $CAIRN_PG_BINDIR: %w", name, err)
		}
		return p, nil
	}
	matches, _ := filepath.Glob(filepath.Join("/usr/lib/postgresql", "*", "bin", name))
	best, bestVer := "", []int(nil)
	for _, m := range matches {
		ver := parseVersion(filepath.Base(filepath.Dir(filepath.Dir(m))))
		if ver != nil && (best == "" || newer(ver, bestVer)) {
			best, bestVer = m, ver
		}
	}
	if best != "" {
		return best, nil
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found in $CAIRN_PG_BINDIR, /usr/lib/postgresql/*/bin or PATH", name)
	}
	return p, nil
}

// parseVersion parses "15" or "9.6"; nil if it is not a version.
func parseVersion(s string) []int {
	var v []int
	for _, part := range strings.Split(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			return nil
		}
		v = append(v, n)
	}
	return v
}

func newer(a, b []int) bool {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return a[i] > b[i]
		}
	}
	return len(a) > len(b)
}

// copyCounter follows a plain dump as it passes and counts the data rows
// of each COPY ... FROM stdin block. In COPY's text format every row is
// one line, and the block ends with a line "\.".
type copyCounter struct {
	tables []string // as the COPY line names them, quoted as needed
	rows   []int64
	// unsure is set when a COPY line could not be read, so the counts
	// cannot be trusted.
	unsure bool

	inCopy  bool
	line    []byte // the start of the current line
	lineLen int    // the length of the current line so far
}

// maxCopyLine bounds the part of a line kept; a COPY line lists every
// column, so it can be long.
const maxCopyLine = 64 << 10

func (c *copyCounter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		part := p
		if i >= 0 {
			part = p[:i]
		}
		// Inside a COPY block only the end marker matters.
		keep := maxCopyLine
		if c.inCopy {
			keep = 2
		}
		if room := keep - len(c.line); room > 0 {
			c.line = append(c.line, part[:min(room, len(part))]...)
		}
		c.lineLen += len(part)
		if i < 0 {
			break
		}
		c.endLine()
		p = p[i+1:]
	}
	return n, nil
}

func (c *copyCounter) endLine() {
	line, whole := c.line, c.lineLen == len(c.line)
	c.line, c.lineLen = c.line[:0], 0
	if c.inCopy {
		if whole && string(line) == `\.` {
			c.inCopy = false
			return
		}
		c.rows[len(c.rows)-1]++
		return
	}
	if !bytes.HasPrefix(line, []byte("COPY ")) {
		return
	}
	name, ok := copyTable(line)
	if !whole || !ok {
		c.unsure = true
		return
	}
	c.tables = append(c.tables, name)
	c.rows = append(c.rows, 0)
	c.inCopy = true
}

// copyTable returns the table of a line "COPY schema.table (cols) FROM stdin;".
func copyTable(line []byte) (string, bool) {
	s := string(line)
	if !strings.HasSuffix(s, " FROM stdin;") {
		return "", false
	}
	s = strings.TrimPrefix(s, "COPY ")
	quoted := false
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '"':
			quoted = !quoted
		case s[i] == ' ' && !quoted:
			return s[:i], i > 0
		}
	}
	return "", false
}
