"""Record, replay and tune: offline evaluation of scheduler configs on recorded traffic."""
