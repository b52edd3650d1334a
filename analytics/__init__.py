"""Analytics: funnel, money, savings and forecast of Cascade journeys."""
