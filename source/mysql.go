package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
)

// mysqlConn is a DSN in the form of github.com/go-sql-driver/mysql:
// [user[:password]@][net[(addr)]]/dbname[?param=value&...].
type mysqlConn struct {
	user, password string
	net, addr      string // tcp and host:port, or unix and a socket path
	db             string
	tls            string // the tls parameter: true, skip-verify, preferred, false
}

func parseMySQLDSN(dsn string) (*mysqlConn, error) {
	// The database name cannot hold a slash, the password can: the
	// last slash ends the address part, the last @ before it the
	// user part.
	slash := strings.LastIndex(dsn, "/")
	if slash < 0 {
		return nil, errors.New("parse mysql DSN: no /dbname")
	}
	c := &mysqlConn{net: "tcp"}
	head, tail := dsn[:slash], dsn[slash+1:]
	if at := strings.LastIndex(head, "@"); at >= 0 {
		userinfo := head[:at]
		head = head[at+1:]
		c.user, c.password, _ = strings.Cut(userinfo, ":")
	}
	if head != "" {
		open := strings.Index(head, "(")
		if open < 0 {
			c.net = head
		} else {
			if !strings.HasSuffix(head, ")") {
				return nil, errors.New("parse mysql DSN: address without closing parenthesis")
			}
			c.net, c.addr = head[:open], head[open+1:len(head)-1]
		}
	}
	db, query, _ := strings.Cut(tail, "?")
	var err error
	if c.db, err = url.PathUnescape(db); err != nil {
		return nil, fmt.Errorf("parse mysql DSN: database name: %w", err)
	}
	params, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("parse mysql DSN: parameters: %w", err)
	}
	c.tls = params.Get("tls")
	switch c.net {
	case "tcp", "tcp4", "tcp6":
		if c.addr == "" {
			c.addr = "127.0.0.1:3306"
		}
	case "unix":
		if c.addr == "" {
			c.addr = "/tmp/mysql.sock"
		}
	default:
		return nil, fmt.Errorf("parse mysql DSN: protocol %q: want tcp or unix", c.net)
	}
	return c, nil
}

// args returns the client arguments that select the server and user.
// --no-defaults comes first, so no option file can point the tool
// elsewhere or supply another password; the DSN says everything.
func (c *mysqlConn) args() ([]string, error) {
	args := []string{"--no-defaults"}
	if c.net == "unix" {
		args = append(args, "--protocol=SOCKET", "--socket="+c.addr)
	} else {
		host, port, err := net.SplitHostPort(c.addr)
		if err != nil {
			host, port = c.addr, "3306"
		}
		args = append(args, "--protocol=TCP", "--host="+host, "--port="+port)
	}
	if c.user != "" {
		args = append(args, "--user="+c.user)
	}
	switch c.tls {
	case "", "false":
	case "true":
		args = append(args, "--ssl", "--ssl-verify-server-cert")
	case "skip-verify", "preferred":
		args = append(args, "--ssl")
	default:
		return nil, fmt.Errorf("mysql DSN: tls=%s is not supported; use true, skip-verify, preferred or false", c.tls)
	}
	return args, nil
}

// mysqlTool prepares a client tool (the first of names found) for c. The
// password goes in MYSQL_PWD, which only the tool's user can read.
func mysqlTool(c *mysqlConn, names []string, args ...string) (*tool, error) {
	path, err := lookTool(names...)
	if err != nil {
		return nil, err
	}
	conn, err := c.args()
	if err != nil {
		return nil, err
	}
	t := &tool{name: names[0], path: path, args: append(conn, args...), secrets: []string{c.password}}
	if c.password != "" {
		t.env = []string{"MYSQL_PWD=" + c.password}
	}
	return t, nil
}

var (
	mysqlDump   = []string{"mariadb-dump", "mysqldump"}
	mysqlClient = []string{"mariadb", "mysql"}
)

// openMySQL dumps the DSN's database in one consistent transaction
// (InnoDB tables), with routines, events and triggers. The dump names no
// database, so it can be restored under any name.
func openMySQL(ctx context.Context, s Spec) (string, io.ReadCloser, error) {
	c, err := parseMySQLDSN(s.DSN)
	if err != nil {
		return "", nil, err
	}
	if c.db == "" {
		return "", nil, errors.New("mysql DSN names no database")
	}
	t, err := mysqlTool(c, mysqlDump, "--single-transaction", "--routines", "--events", "--triggers", "--", c.db)
	if err != nil {
		return "", nil, err
	}
	rc, err := t.stream(ctx)
	if err != nil {
		return "", nil, err
	}
	return "dump.sql", rc, nil
}

// restoreMySQL replays a dump into t.DSN's database with the client,
// which stops at the first error.
func restoreMySQL(ctx context.Context, s Spec, t Target, r io.Reader) error {
	c, err := parseMySQLDSN(t.DSN)
	if err != nil {
		return err
	}
	if c.db == "" {
		return errors.New("the target DSN names no database")
	}
	if err := mysqlPrepareDB(ctx, c, t.Overwrite); err != nil {
		return err
	}
	tl, err := mysqlTool(c, mysqlClient, "--batch", "--database="+c.db)
	if err != nil {
		return err
	}
	return tl.feed(ctx, r)
}

// mysqlPrepareDB makes sure the database exists and is empty: it creates
// a missing one, and refuses one that holds tables, views, routines or
// events, unless overwrite, which drops it and creates it again with the
// same character set and collation.
func mysqlPrepareDB(ctx context.Context, c *mysqlConn, overwrite bool) error {
	name, ident := mysqlString(c.db), mysqlIdent(c.db)
	out, err := mysqlQuery(ctx, c, "SELECT CONCAT(DEFAULT_CHARACTER_SET_NAME, ' ', DEFAULT_COLLATION_NAME) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = "+name+";")
	if err != nil {
		return err
	}
	if out == "" {
		_, err := mysqlQuery(ctx, c, "CREATE DATABASE "+ident+";")
		return err
	}
	objects, err := mysqlQuery(ctx, c, "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = "+name+
		") + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = "+name+
		") + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = "+name+");")
	if err != nil {
		return err
	}
	if objects == "0" {
		return nil
	}
	if !overwrite {
		return fmt.Errorf("database %q is not empty (%s tables, views, routines or events); restore into a new database or allow overwriting", c.db, objects)
	}
	charset, collation, _ := strings.Cut(out, " ")
	_, err = mysqlQuery(ctx, c, "DROP DATABASE "+ident+"; CREATE DATABASE "+ident+
		" CHARACTER SET "+mysqlIdent(charset)+" COLLATE "+mysqlIdent(collation)+";")
	return err
}

// mysqlQuery runs sql with the client, without selecting a database, and
// returns its trimmed output.
func mysqlQuery(ctx context.Context, c *mysqlConn, sql string) (string, error) {
	t, err := mysqlTool(c, mysqlClient, "--batch", "--skip-column-names")
	if err != nil {
		return "", err
	}
	out, err := t.output(ctx, sql)
	return strings.TrimSpace(out), err
}

func mysqlIdent(s string) string { return "`" + strings.ReplaceAll(s, "`", "``") + "`" }

func mysqlString(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, "'", `\'`) + "'"
}
