"""Reading what trainers report: their /metrics text, parsed into what the decision engine takes."""
