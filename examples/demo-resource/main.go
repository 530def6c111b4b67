// Command demo-resource is the "on-premises" HTTP API that `make run`
// publishes through the tunnel: it answers every request with a short text
// that names the server and echoes what arrived, so you can see a request
// cross proxy → relay → agent.
//
// With -check ADDR,..., it only checks that each address is free to listen
// on, and exits 1 naming those that are not: `make run` checks the demo's
// fixed ports this way before it starts anything.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8081", "address to serve on")
	check := flag.String("check", "", "only check that these comma-separated addresses are free; exit 1 if any is not")
	flag.Parse()
	if *check != "" {
		if taken := busy(strings.Split(*check, ",")); len(taken) > 0 {
			for _, t := range taken {
				fmt.Fprintln(os.Stderr, t)
			}
			os.Exit(1)
		}
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		host, _ := os.Hostname()
		fmt.Fprintf(w, "hello from the on-premises demo resource at %s (host %s)\n", *addr, host)
		fmt.Fprintf(w, "you asked for %s %s, from %s, at %s\n", r.Method, r.URL.Path, r.RemoteAddr, time.Now().Format(time.RFC3339))
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Printf("demo resource listening on %s", *addr)
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
}

// busy returns a line for each address that cannot be listened on now.
func busy(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			out = append(out, fmt.Sprintf("%s is not free: %v", a, err))
			continue
		}
		ln.Close()
	}
	return out
}
