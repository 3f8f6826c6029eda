package source_test

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/source"
	"github.com/cairn-backup/cairn/tests/testenv"
)

// mysqlPassword has the characters a DSN, a shell or an option file
// could trip over.
const mysqlPassword = `p@ss:w/rd#"x'y\z`

// mysqlDSN connects as the user bk, which has mysqlPassword.
func mysqlDSN(srv *testenv.MariaDBServer, db string) string {
	return fmt.Sprintf("bk:%s@tcp(%s)/%s", mysqlPassword, srv.Addr, db)
}

// mariadb runs sql as root and returns the tab-separated output.
func mariadb(t *testing.T, srv *testenv.MariaDBServer, db, sql string) string {
	t.Helper()
	args := srv.ClientArgs("--batch", "--skip-column-names")
	if db != "" {
		args = append(args, "--database="+db)
	}
	cmd := exec.Command(srv.Bin("mariadb"), args...)
	cmd.Stdin = strings.NewReader(sql)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mariadb: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// mariadbDumpText dumps db as root, without the comment lines that
// name the database and the time.
func mariadbDumpText(t *testing.T, srv *testenv.MariaDBServer, db string) string {
	t.Helper()
	out, err := exec.Command(srv.Bin("mariadb-dump"),
		srv.ClientArgs("--single-transaction", "--routines", "--events", "--triggers", db)...).Output()
	if err != nil {
		t.Fatalf("mariadb-dump %s: %v", db, err)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, "-- ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

const mysqlSchema = `
SET SESSION max_recursive_iterations = 100000;
CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, data VARBINARY(64)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO customers (name, data)
  WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 5000)
  SELECT CONCAT('customer ', n, ' ü ', REPEAT('x', 40)), UNHEX(MD5(n)) FROM seq;
INSERT INTO customers (name, data) VALUES ('binary edge', UNHEX('000D0A275C1A22'));
CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT, total DECIMAL(10,2),
  FOREIGN KEY (customer_id) REFERENCES customers(id)) ENGINE=InnoDB;
INSERT INTO orders SELECT id, id, id * 1.5 FROM customers WHERE id <= 700;
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, note TEXT) ENGINE=Aria;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW INSERT INTO audit (note) VALUES (CONCAT('order ', NEW.id));
INSERT INTO orders VALUES (701, 701, 9.99);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
CREATE PROCEDURE order_count(OUT n INT) SELECT COUNT(*) INTO n FROM orders;
`

// mysqlState returns the row count and checksum of each table.
func mysqlState(t *testing.T, srv *testenv.MariaDBServer, db string) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"customers", "orders", "audit"} {
		count := mariadb(t, srv, db, "SELECT COUNT(*) FROM "+table+";")
		sum := strings.Fields(mariadb(t, srv, db, "CHECKSUM TABLE "+table+" EXTENDED;"))
		fmt.Fprintf(&b, "%s: %s rows, checksum %s\n", table, count, sum[len(sum)-1])
	}
	return b.String()
}

func TestMySQLRoundTrip(t *testing.T) {
	srv := testenv.MariaDB(t)
	pw := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(mysqlPassword)
	mariadb(t, srv, "", fmt.Sprintf(`CREATE DATABASE shop;
CREATE USER 'bk'@'127.0.0.1' IDENTIFIED BY '%[1]s'; GRANT ALL ON *.* TO 'bk'@'127.0.0.1';
CREATE USER 'bk'@'localhost' IDENTIFIED BY '%[1]s'; GRANT ALL ON *.* TO 'bk'@'localhost';`, pw))
	mariadb(t, srv, "shop", mysqlSchema)
	want := mysqlState(t, srv, "shop")
	wantDump := mariadbDumpText(t, srv, "shop")

	spec := source.Spec{Kind: "mysql", Name: "acls", DSN: mysqlDSN(srv, "shop")}
	checkPasswordOnlyInEnvironment(t, spec, "mariadb-dump", mysqlPassword)
	name, data := mustDump(t, spec)
	if name != "dump.sql" || !bytes.Contains(data, []byte("CREATE TABLE `customers`")) {
		t.Fatalf("%s: %d bytes without the customers table", name, len(data))
	}
	if bytes.Contains(data, []byte("USE `shop`")) {
		t.Error("the dump names its database, so it cannot be restored under another name")
	}

	restore := func(overwrite bool) error {
		return source.RestoreLive(t.Context(), spec,
			source.Target{DSN: mysqlDSN(srv, "shop_restored"), Overwrite: overwrite}, bytes.NewReader(data))
	}
	if err := restore(false); err != nil {
		t.Fatal(err)
	}
	if got := mysqlState(t, srv, "shop_restored"); got != want {
		t.Errorf("restored tables:\n%s\nwant:\n%s", got, want)
	}
	if got := mariadbDumpText(t, srv, "shop_restored"); got != wantDump {
		t.Error("a dump of the restored database differs from the original's")
	}
	// The trigger came back and works.
	mariadb(t, srv, "shop_restored", "INSERT INTO orders VALUES (702, 702, 1);")
	if got := mariadb(t, srv, "shop_restored", "SELECT note FROM audit ORDER BY id DESC LIMIT 1;"); got != "order 702" {
		t.Errorf("trigger after the restore: last audit note %q", got)
	}

	err := restore(false)
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("restore into a database with tables: %v", err)
	}
	if err := restore(true); err != nil {
		t.Fatalf("overwrite: %v", err)
	}
	if got := mysqlState(t, srv, "shop_restored"); got != want {
		t.Errorf("after overwriting:\n%s\nwant:\n%s", got, want)
	}
}

func TestMySQLErrors(t *testing.T) {
	srv := testenv.MariaDB(t)
	pw := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(mysqlPassword)
	mariadb(t, srv, "", fmt.Sprintf(`CREATE DATABASE shop;
CREATE USER 'bk'@'127.0.0.1' IDENTIFIED BY '%[1]s'; GRANT ALL ON *.* TO 'bk'@'127.0.0.1';`, pw))

	wrong := source.Spec{Kind: "mysql", Name: "acls", DSN: fmt.Sprintf("bk:not-%s@tcp(%s)/shop", mysqlPassword, srv.Addr)}
	_, _, err := dump(t, wrong)
	if err == nil || !strings.Contains(err.Error(), "Access denied for user 'bk'") {
		t.Errorf("dump with a wrong password: %v", err)
	} else if strings.Contains(err.Error(), mysqlPassword) {
		t.Errorf("the error shows the password: %v", err)
	}

	_, _, err = dump(t, source.Spec{Kind: "mysql", Name: "acls", DSN: mysqlDSN(srv, "nope")})
	if err == nil || !strings.Contains(err.Error(), "Unknown database 'nope'") {
		t.Errorf("dump of a missing database: %v", err)
	}

	bad := "CREATE TABLE t (x INT);\nINSERT INTO t VALUES (1);\nINSERT INTO missing_table VALUES (1);\n"
	err = source.RestoreLive(t.Context(), wrong, source.Target{DSN: mysqlDSN(srv, "broken")}, strings.NewReader(bad))
	if err == nil || !strings.Contains(err.Error(), "missing_table' doesn't exist") {
		t.Errorf("restore of a bad dump: %v", err)
	}
}
