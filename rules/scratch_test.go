package rules

import (
	"fmt"
	"os"
	"testing"
)

func TestScratch(t *testing.T) {
	c, err := Load(os.Getenv("SCRATCH"))
	fmt.Printf("%v\n%+v\n", err, c)
	if c != nil {
		fmt.Printf("%+v\n%+v\n%+v\n", c.Relay, c.Agent, c.Proxy)
	}
}
