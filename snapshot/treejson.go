package snapshot

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/cairn-backup/cairn/repo"
)

// decodeTreeFast parses a tree blob without encoding/json's reflection:
// decoding the parent's trees took a third of an unchanged backup's CPU. It
// reads the subset of JSON that Tree.Encode writes (known keys, each at most
// once; strings without escapes; unsigned integers) and reports false for
// anything else, which DecodeTree then hands to encoding/json. Whatever it
// accepts, it decodes as encoding/json would (FuzzDecodeTreeFast).
func decodeTreeFast(b []byte) (Tree, bool) {
	p := treeParser{b: b}
	var t Tree
	if !p.eat('{') {
		return Tree{}, false
	}
	if k, ok := p.key(); !ok || string(k) != "nodes" {
		return Tree{}, false
	}
	if !p.literal("null") {
		var ok bool
		if t.Nodes, ok = array(&p, p.node); !ok {
			return Tree{}, false
		}
	}
	if !p.eat('}') {
		return Tree{}, false
	}
	p.space()
	return t, p.i == len(p.b)
}

type treeParser struct {
	b []byte
	i int
	// the last user and group names read: most nodes of a tree repeat them
	user, group string
}

func (p *treeParser) space() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// eat consumes c, after any white space.
func (p *treeParser) eat(c byte) bool {
	p.space()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// literal consumes lit (null, true or false), after any white space.
func (p *treeParser) literal(lit string) bool {
	p.space()
	if bytes.HasPrefix(p.b[p.i:], []byte(lit)) {
		p.i += len(lit)
		return true
	}
	return false
}

// str returns the content of a string, without its quotes. Strings with
// escapes, control characters or invalid UTF-8 (which encoding/json would
// rewrite) are not read.
func (p *treeParser) str() ([]byte, bool) {
	p.space()
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return nil, false
	}
	start, ascii := p.i+1, true
	for j := start; j < len(p.b); j++ {
		switch c := p.b[j]; {
		case c == '"':
			s := p.b[start:j]
			if !ascii && !utf8.Valid(s) {
				return nil, false
			}
			p.i = j + 1
			return s, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false
}

// key reads an object key and its colon.
func (p *treeParser) key() ([]byte, bool) {
	k, ok := p.str()
	return k, ok && p.eat(':')
}

// unsigned reads an unsigned integer that fits in bits bits.
func (p *treeParser) unsigned(bits uint) (uint64, bool) {
	p.space()
	start := p.i
	var v uint64
	for ; p.i < len(p.b) && '0' <= p.b[p.i] && p.b[p.i] <= '9'; p.i++ {
		d := uint64(p.b[p.i] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	n := p.i - start
	if n == 0 || n > 1 && p.b[start] == '0' || bits < 64 && v>>bits != 0 {
		return 0, false
	}
	// A fraction or exponent is left unread and fails what comes next.
	return v, true
}

func (p *treeParser) name() (Name, bool) {
	s, ok := p.str()
	return Name(bytes.Clone(s)), ok
}

func (p *treeParser) id() (repo.ID, bool) {
	var id repo.ID
	s, ok := p.str()
	if !ok || len(s) != 2*len(id) {
		return id, false
	}
	_, err := hex.Decode(id[:], s)
	return id, err == nil
}

// quoted returns the next string with its quotes, as encoding/json hands a
// value to an UnmarshalJSON method.
func (p *treeParser) quoted() ([]byte, bool) {
	p.space()
	start := p.i
	_, ok := p.str()
	return p.b[start:p.i], ok
}

// intern returns s as a string, reusing *last when equal.
func intern(s []byte, last *string) string {
	if string(s) != *last {
		*last = string(s)
	}
	return *last
}

// typeName returns the constant for a node type, without allocating.
func typeName(s []byte) string {
	for _, t := range [...]string{TypeFile, TypeDir, TypeSymlink, TypeDev, TypeCharDev, TypeFIFO, TypeSocket} {
		if string(s) == t {
			return t
		}
	}
	return string(s)
}

// object reads a JSON object, calling field with each key to read its
// value. field returns the key's bit (0 for a key it does not know) and
// whether the value was read; a key seen twice fails the object.
func (p *treeParser) object(field func(key []byte) (uint32, bool)) bool {
	if !p.eat('{') {
		return false
	}
	var seen uint32
	for first := true; !p.eat('}'); first = false {
		if !first && !p.eat(',') {
			return false
		}
		k, ok := p.key()
		if !ok {
			return false
		}
		bit, ok := field(k)
		if !ok || bit == 0 || seen&bit != 0 {
			return false
		}
		seen |= bit
	}
	return true
}

func (p *treeParser) node() (*Node, bool) {
	n := &Node{}
	ok := p.object(func(k []byte) (bit uint32, ok bool) {
		var v uint64
		var s []byte
		switch string(k) {
		case "name":
			bit = 1 << 0
			n.Name, ok = p.name()
		case "type":
			bit = 1 << 1
			s, ok = p.str()
			n.Type = typeName(s)
		case "mode":
			bit = 1 << 2
			v, ok = p.unsigned(32)
			n.Mode = uint32(v)
		case "uid":
			bit = 1 << 3
			v, ok = p.unsigned(32)
			n.UID = uint32(v)
		case "gid":
			bit = 1 << 4
			v, ok = p.unsigned(32)
			n.GID = uint32(v)
		case "user":
			bit = 1 << 5
			s, ok = p.str()
			n.User = intern(s, &p.user)
		case "group":
			bit = 1 << 6
			s, ok = p.str()
			n.Group = intern(s, &p.group)
		case "size":
			bit = 1 << 7
			n.Size, ok = p.unsigned(64)
		case "mtime":
			bit = 1 << 8
			ok = p.timestamp(&n.ModTime)
		case "atime":
			bit = 1 << 9
			ok = p.timestamp(&n.ATime)
		case "ctime":
			bit = 1 << 10
			ok = p.timestamp(&n.CTime)
		case "inode":
			bit = 1 << 11
			n.Inode, ok = p.unsigned(64)
		case "device_id":
			bit = 1 << 12
			n.DeviceID, ok = p.unsigned(64)
		case "links":
			bit = 1 << 13
			n.Links, ok = p.unsigned(64)
		case "rdev":
			bit = 1 << 14
			n.Rdev, ok = p.unsigned(64)
		case "link":
			bit = 1 << 15
			n.Link, ok = p.name()
		case "content":
			bit = 1 << 16
			n.Content, ok = array(p, p.id)
		case "subtree":
			bit = 1 << 17
			var id repo.ID
			id, ok = p.id()
			n.Subtree = &id
		case "xattrs":
			bit = 1 << 18
			n.Xattrs, ok = array(p, p.xattr)
		case "sparse":
			bit = 1 << 19
			n.Sparse, ok = p.boolean()
		}
		return bit, ok
	})
	return n, ok
}

// timestamp reads a time through time.Time's own UnmarshalJSON, as
// encoding/json does.
func (p *treeParser) timestamp(t *time.Time) bool {
	q, ok := p.quoted()
	return ok && t.UnmarshalJSON(q) == nil
}

func (p *treeParser) boolean() (bool, bool) {
	if p.literal("true") {
		return true, true
	}
	return false, p.literal("false")
}

// array reads a JSON array of what elem reads. An empty one is an empty
// slice, not nil, as encoding/json makes it.
func array[T any](p *treeParser, elem func() (T, bool)) ([]T, bool) {
	if !p.eat('[') {
		return nil, false
	}
	out := make([]T, 0, 1)
	for first := true; !p.eat(']'); first = false {
		if !first && !p.eat(',') {
			return nil, false
		}
		v, ok := elem()
		if !ok {
			return nil, false
		}
		out = append(out, v)
	}
	return out, true
}

func (p *treeParser) xattr() (Xattr, bool) {
	var x Xattr
	ok := p.object(func(k []byte) (bit uint32, ok bool) {
		switch string(k) {
		case "name":
			bit = 1
			x.Name, ok = p.name()
		case "value":
			bit = 2
			// As encoding/json decodes a []byte.
			var s []byte
			if s, ok = p.str(); ok {
				x.Value = make([]byte, base64.StdEncoding.DecodedLen(len(s)))
				n, err := base64.StdEncoding.Decode(x.Value, s)
				x.Value, ok = x.Value[:n], err == nil
			}
		}
		return bit, ok
	})
	return x, ok
}

// encodeTreeFast returns the JSON of t byte for byte as encoding/json
// writes it (a tree's ID is the hash of these bytes, so an unchanged
// directory must encode the same way whichever path wrote it), without its
// reflection: encoding changed directories' trees was 8% of a night-2
// backup's CPU. It reports false for what it leaves to encoding/json:
// strings that need escaping, names that are not UTF-8, times outside
// RFC 3339's years (FuzzEncodeTreeFast).
func encodeTreeFast(t *Tree) ([]byte, bool) {
	if t.Nodes == nil {
		return []byte(`{"nodes":null}`), true
	}
	b := make([]byte, 0, 64+400*len(t.Nodes))
	b = append(b, `{"nodes":[`...)
	for i, n := range t.Nodes {
		if i > 0 {
			b = append(b, ',')
		}
		var ok bool
		if b, ok = appendNode(b, n); !ok {
			return nil, false
		}
	}
	return append(b, "]}"...), true
}

func appendNode(b []byte, n *Node) ([]byte, bool) {
	if n == nil {
		return append(b, "null"...), true
	}
	ok := true
	str := func(key string, s []byte) {
		b = append(b, key...)
		if !plainString(s) {
			ok = false
		}
		b = append(append(append(b, '"'), s...), '"')
	}
	num := func(key string, v uint64) {
		b = strconv.AppendUint(append(b, key...), v, 10)
	}
	tm := func(key string, t time.Time) {
		var err error
		b, err = t.AppendText(append(append(b, key...), '"'))
		b = append(b, '"')
		ok = ok && err == nil
	}
	str(`{"name":`, n.Name)
	str(`,"type":`, []byte(n.Type))
	num(`,"mode":`, uint64(n.Mode))
	num(`,"uid":`, uint64(n.UID))
	num(`,"gid":`, uint64(n.GID))
	if n.User != "" {
		str(`,"user":`, []byte(n.User))
	}
	if n.Group != "" {
		str(`,"group":`, []byte(n.Group))
	}
	if n.Size != 0 {
		num(`,"size":`, n.Size)
	}
	tm(`,"mtime":`, n.ModTime)
	tm(`,"atime":`, n.ATime)
	tm(`,"ctime":`, n.CTime)
	for _, f := range [...]struct {
		key string
		v   uint64
	}{{`,"inode":`, n.Inode}, {`,"device_id":`, n.DeviceID}, {`,"links":`, n.Links}, {`,"rdev":`, n.Rdev}} {
		if f.v != 0 {
			num(f.key, f.v)
		}
	}
	if len(n.Link) > 0 {
		str(`,"link":`, n.Link)
	}
	if len(n.Content) > 0 {
		b = append(b, `,"content":[`...)
		for i, id := range n.Content {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(hex.AppendEncode(append(b, '"'), id[:]), '"')
		}
		b = append(b, ']')
	}
	if n.Subtree != nil {
		b = append(hex.AppendEncode(append(b, `,"subtree":"`...), n.Subtree[:]), '"')
	}
	if len(n.Xattrs) > 0 {
		b = append(b, `,"xattrs":[`...)
		for i, x := range n.Xattrs {
			if i > 0 {
				b = append(b, ',')
			}
			str(`{"name":`, x.Name)
			b = append(b, `,"value":`...)
			if x.Value == nil {
				b = append(b, "null}"...)
			} else {
				b = append(base64.StdEncoding.AppendEncode(append(b, '"'), x.Value), `"}`...)
			}
		}
		b = append(b, ']')
	}
	if n.Sparse {
		b = append(b, `,"sparse":true`...)
	}
	return append(b, '}'), ok
}

// plainString reports whether encoding/json writes s as it is between
// quotes: valid UTF-8 without control characters, quotes, backslashes, the
// characters it escapes for HTML (<, >, &) or U+2028 and U+2029.
func plainString(s []byte) bool {
	ascii := true
	for _, c := range s {
		switch {
		case c < 0x20, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return ascii || utf8.Valid(s) && !bytes.Contains(s, []byte("\u2028")) && !bytes.Contains(s, []byte("\u2029"))
}
