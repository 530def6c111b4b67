// Command tds checks a SQL Server path at the protocol level, without SQL
// Server: TDS's first exchange, PRELOGIN, the one every SQL Server client
// (ODBC, JDBC, SqlClient, go-mssqldb, sqlcmd) starts with.
//
//	tds serve -listen 127.0.0.1:21433      a fake responder: answers PRELOGIN as SQL Server 2019 does
//	tds prelogin -addr 127.0.0.2:21433     a client: sends PRELOGIN, checks and prints the answer
//
// It is not SQL Server: it stops before LOGIN7 (authentication), TLS and
// queries. It shows that a client-speaks-first binary protocol on the SQL
// Server port crosses the tunnel byte for byte.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// ioTimeout bounds each exchange: a fake server and a one-packet client have
// nothing to wait for.
const ioTimeout = 15 * time.Second

func main() {
	log.SetFlags(0)
	log.SetPrefix("tds: ")
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	switch os.Args[1] {
	case "serve":
		addr := fs.String("listen", "127.0.0.1:21433", "address to answer TDS on")
		fs.Parse(os.Args[2:])
		if err := serve(*addr); err != nil {
			log.Fatal(err)
		}
	case "prelogin":
		addr := fs.String("addr", "127.0.0.2:21433", "address of the SQL Server (here: the proxy)")
		fs.Parse(os.Args[2:])
		if err := prelogin(os.Stdout, *addr); err != nil {
			log.Fatal(err)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: tds serve [-listen ADDR] | tds prelogin [-addr ADDR]")
	os.Exit(2)
}

// serve answers PRELOGIN on addr until SIGINT or SIGTERM.
func serve(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	log.Printf("fake TDS responder (not SQL Server) listening on %s", ln.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if err := answer(c); err != nil {
				log.Printf("%s: %v", c.RemoteAddr(), err)
			}
		}()
	}
}

// answer serves one connection: PRELOGIN in, the reply out, then the
// connection ends (a LOGIN7 is refused: this is not SQL Server).
func answer(c net.Conn) error {
	c.SetDeadline(time.Now().Add(ioTimeout))
	p, err := readPacket(c)
	if err != nil {
		return fmt.Errorf("reading PRELOGIN: %w", err)
	}
	if p.typ != typePrelogin {
		return fmt.Errorf("first packet of type 0x%02x, want PRELOGIN (0x12)", p.typ)
	}
	opts, err := decodeOptions(p.payload)
	if err != nil {
		return err
	}
	reply, err := serverReply(opts)
	if err != nil {
		return err
	}
	v, _ := parseVersion(opts[optVersion])
	log.Printf("%s: PRELOGIN (%d bytes): client version %s, %s; answered as SQL Server %s",
		c.RemoteAddr(), headerLen+len(p.payload), v, encryptionName(first(opts[optEncryption])), serverVersion)
	if err := writePacket(c, reply); err != nil {
		return err
	}
	switch next, err := readPacket(c); {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return err
	case next.typ == typeLogin7:
		return errors.New("LOGIN7 received: this fake responder stops after PRELOGIN")
	default:
		return fmt.Errorf("unexpected packet of type 0x%02x after PRELOGIN", next.typ)
	}
}

func first(b []byte) byte {
	if len(b) == 0 {
		return 0xFF
	}
	return b[0]
}

// prelogin sends a PRELOGIN to addr, checks the answer is SQL Server's
// PRELOGIN reply, and prints what it says.
func prelogin(w io.Writer, addr string) error {
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	req := clientPrelogin(uint32(os.Getpid()))
	if err := writePacket(c, req); err != nil {
		return fmt.Errorf("sending PRELOGIN: %w", err)
	}
	fmt.Fprintf(w, "sent PRELOGIN to %s: %d bytes, ENCRYPT_NOT_SUP, default instance\n", addr, headerLen+len(req.payload))
	p, err := readPacket(c)
	if err != nil {
		return fmt.Errorf("reading the answer: %w", err)
	}
	if p.typ != typeReply || p.status&statusEOM == 0 {
		return fmt.Errorf("answer of type 0x%02x status 0x%02x, want a tabular result (0x04) with EOM", p.typ, p.status)
	}
	opts, err := decodeOptions(p.payload)
	if err != nil {
		return err
	}
	v, err := parseVersion(opts[optVersion])
	if err != nil {
		return err
	}
	inst := "the default instance answered"
	if first(opts[optInstOpt]) != 0x00 {
		inst = "the instance did not match"
	}
	mars := "MARS off"
	if first(opts[optMARS]) == 0x01 {
		mars = "MARS on"
	}
	fmt.Fprintf(w, "answer: TDS packet type 0x04, %d bytes: server version %s, %s, %s, %s\n",
		headerLen+len(p.payload), v, encryptionName(first(opts[optEncryption])), inst, mars)
	return nil
}
