//go:build !linux

package stream

// parkState is empty where halves are not parked.
type parkState struct{}

func parkingAvailable() bool        { return false }
func (h *half) parkIdle() bool      { return false }
func (h *half) unparkToClose() bool { return false }
